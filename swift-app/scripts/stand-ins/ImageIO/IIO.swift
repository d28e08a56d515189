// Stand-in for Apple's ImageIO, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
import CoreGraphics
@available(iOS 4.0, macOS 10.4, *)
public final class CGImageSource {}
@available(iOS 4.0, macOS 10.4, *)
public final class CGImageDestination {}
@available(iOS 4.0, macOS 10.4, *)
public func CGImageSourceCreateWithURL(_ url: CFURL, _ options: CFDictionary?) -> CGImageSource? { nil }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageSourceCreateWithData(_ data: CFData, _ options: CFDictionary?) -> CGImageSource? { nil }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageSourceGetCount(_ s: CGImageSource) -> Int { 0 }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageSourceCopyPropertiesAtIndex(_ s: CGImageSource, _ i: Int, _ o: CFDictionary?) -> CFDictionary? { nil }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageSourceCreateThumbnailAtIndex(_ s: CGImageSource, _ i: Int, _ o: CFDictionary?) -> CGImage? { nil }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageSourceCreateImageAtIndex(_ s: CGImageSource, _ i: Int, _ o: CFDictionary?) -> CGImage? { nil }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageDestinationCreateWithData(_ d: CFMutableData, _ t: CFString, _ c: Int, _ o: CFDictionary?) -> CGImageDestination? { nil }
@available(iOS 4.0, macOS 10.4, *)
public func CGImageDestinationAddImage(_ d: CGImageDestination, _ i: CGImage, _ o: CFDictionary?) {}
@available(iOS 4.0, macOS 10.4, *)
public func CGImageDestinationFinalize(_ d: CGImageDestination) -> Bool { false }
@available(iOS 4.0, macOS 10.4, *)
public var kCGImagePropertyPixelWidth: CFString { "" as CFString }
@available(iOS 4.0, macOS 10.4, *)
public var kCGImagePropertyPixelHeight: CFString { "" as CFString }
@available(iOS 4.0, macOS 10.4, *)
public var kCGImageSourceCreateThumbnailFromImageAlways: CFString { "" as CFString }
@available(iOS 4.0, macOS 10.4, *)
public var kCGImageSourceCreateThumbnailWithTransform: CFString { "" as CFString }
@available(iOS 4.0, macOS 10.4, *)
public var kCGImageSourceThumbnailMaxPixelSize: CFString { "" as CFString }
@available(iOS 7.0, macOS 10.9, *)
public var kCGImageSourceShouldCacheImmediately: CFString { "" as CFString }
