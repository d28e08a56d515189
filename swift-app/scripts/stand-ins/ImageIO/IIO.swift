// Stand-in for Apple's ImageIO, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
import CoreGraphics
public final class CGImageSource {}
public final class CGImageDestination {}
public func CGImageSourceCreateWithURL(_ url: CFURL, _ options: CFDictionary?) -> CGImageSource? { nil }
public func CGImageSourceCreateWithData(_ data: CFData, _ options: CFDictionary?) -> CGImageSource? { nil }
public func CGImageSourceGetCount(_ s: CGImageSource) -> Int { 0 }
public func CGImageSourceCopyPropertiesAtIndex(_ s: CGImageSource, _ i: Int, _ o: CFDictionary?) -> CFDictionary? { nil }
public func CGImageSourceCreateThumbnailAtIndex(_ s: CGImageSource, _ i: Int, _ o: CFDictionary?) -> CGImage? { nil }
public func CGImageSourceCreateImageAtIndex(_ s: CGImageSource, _ i: Int, _ o: CFDictionary?) -> CGImage? { nil }
public func CGImageDestinationCreateWithData(_ d: CFMutableData, _ t: CFString, _ c: Int, _ o: CFDictionary?) -> CGImageDestination? { nil }
public func CGImageDestinationAddImage(_ d: CGImageDestination, _ i: CGImage, _ o: CFDictionary?) {}
public func CGImageDestinationFinalize(_ d: CGImageDestination) -> Bool { false }
public let kCGImagePropertyPixelWidth: CFString = "" as CFString
public let kCGImagePropertyPixelHeight: CFString = "" as CFString
public let kCGImageSourceCreateThumbnailFromImageAlways: CFString = "" as CFString
public let kCGImageSourceCreateThumbnailWithTransform: CFString = "" as CFString
public let kCGImageSourceThumbnailMaxPixelSize: CFString = "" as CFString
public let kCGImageSourceShouldCacheImmediately: CFString = "" as CFString
