#if canImport(CoreGraphics) && canImport(ImageIO) && canImport(UniformTypeIdentifiers)
import CoreGraphics
import Foundation
import ImageIO
import UniformTypeIdentifiers

/// Reading, fitting and writing images with CoreGraphics/ImageIO, with the checks `pocketsd generate`
/// makes on its inputs (python/pocketsd/pipeline/inputs.py): too small, too large, unreadable → one line;
/// CMYK, 16-bit, alpha, orientation → converted by drawing into an 8-bit sRGB context on white.
public enum ImageFiles {
    public static let minSide = 16
    public static let maxPixels = 64 * 1024 * 1024
    static let aspectTolerance = 0.01

    /// Opens an image file (first frame, EXIF orientation applied).
    public static func load(_ url: URL) throws -> CGImage {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw PocketSDError.badInput("no image at \(url.path)")
        }
        return try decode(CGImageSourceCreateWithURL(url as CFURL, nil), name: url.lastPathComponent)
    }

    /// Decodes image bytes (what PhotosPicker hands over), with the same checks as `load`. With `maxPixelSize` the
    /// image is decoded straight to at most that many pixels a side (a 48-megapixel photo never exists at full size
    /// in memory); the app passes twice the bundle's side, which keeps enough for the center crop.
    public static func load(data: Data, name: String = "the picked image", maxPixelSize: Int? = nil) throws -> CGImage {
        try decode(CGImageSourceCreateWithData(data as CFData, nil), name: name, maxPixelSize: maxPixelSize)
    }

    static func decode(_ source: CGImageSource?, name: String, maxPixelSize: Int? = nil) throws -> CGImage {
        guard let source, CGImageSourceGetCount(source) > 0 else {
            throw PocketSDError.badInput("\(name) is not an image this system can read (PNG, JPEG, HEIC, …)")
        }
        let properties = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any] ?? [:]
        let width = properties[kCGImagePropertyPixelWidth] as? Int ?? 0
        let height = properties[kCGImagePropertyPixelHeight] as? Int ?? 0
        // Refuse before decoding: a 20000×20000 image would take gigabytes.
        if width * height > maxPixels {
            throw PocketSDError.badInput("\(name) is \(width)×\(height); images above 64 megapixels are refused, resize it first")
        }
        if width > 0, height > 0, min(width, height) < minSide {
            throw PocketSDError.badInput("\(name) is \(width)×\(height); an image needs at least \(minSide) pixels a side")
        }
        // A "thumbnail" at full size is ImageIO's way to apply the EXIF orientation while decoding.
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true,
            kCGImageSourceThumbnailMaxPixelSize: min(max(width, height, minSide), max(maxPixelSize ?? Int.max, minSide)),
            kCGImageSourceShouldCacheImmediately: true,
        ]
        let oriented = width > 0 ? CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) : nil
        guard let image = oriented ?? CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw PocketSDError.badInput("\(name) is truncated or damaged; it could not be decoded")
        }
        if min(image.width, image.height) < minSide {
            throw PocketSDError.badInput("\(name) is \(image.width)×\(image.height); an image needs at least \(minSide) pixels a side")
        }
        return image
    }

    /// What a run starts from, at the bundle's size, as the Python side prepares it (pipeline/session.py):
    /// a photo is center-cropped and scaled; a sketch is cleaned (`SketchCleaner`) and filled with the prompt's
    /// colors. With a ControlNet the photo (x / 255) or the sketch's strokes (white on black) become its
    /// conditioning image instead, and the run starts from noise. Notes for the user are appended to `notes`.
    public struct RunInputs {
        public var start: RGBImage?
        public var mask: GrayImage?
        public var control: Tensor?
    }

    public static func runInputs(photo: CGImage?, sketch: CGImage?, mask: CGImage?, controlNet: Bool, prompt: String,
                                 size: (height: Int, width: Int), notes: inout [String]) throws -> RunInputs {
        var inputs = RunInputs()
        if let photo {
            let (fitted, note) = try fit(photo, width: size.width, height: size.height)
            if let note { notes.append(note) }
            let pixels = try rgb(fitted)
            if controlNet { inputs.control = ImageTensors.controlTensor(pixels) } else { inputs.start = pixels }
        } else if let sketch {
            let (gray, note) = try sketchGray(sketch, width: size.width, height: size.height)
            if let note { notes.append(note) }
            let cleaned = try SketchCleaner.clean(gray, prompt: prompt)
            notes += cleaned.notes
            if controlNet {
                inputs.control = ImageTensors.controlTensor(lines: cleaned.lines, width: size.width, height: size.height)
            } else {
                inputs.start = cleaned.start
            }
        }
        if let mask { inputs.mask = try Self.mask(mask, width: size.width, height: size.height) }
        return inputs
    }

    /// Center-crops `image` to the aspect of width×height and scales it there, in 8-bit sRGB on white.
    /// Returns a note when the aspect had to change (the Python side warns the same way).
    public static func fit(_ image: CGImage, width: Int, height: Int) throws -> (image: CGImage, note: String?) {
        let sourceAspect = Double(image.width) / Double(image.height)
        let targetAspect = Double(width) / Double(height)
        var crop = CGRect(x: 0, y: 0, width: image.width, height: image.height)
        var note: String?
        if abs(sourceAspect / targetAspect - 1) > aspectTolerance {
            if sourceAspect > targetAspect {
                let w = Double(image.height) * targetAspect
                crop = CGRect(x: (Double(image.width) - w) / 2, y: 0, width: w, height: Double(image.height))
            } else {
                let h = Double(image.width) / targetAspect
                crop = CGRect(x: 0, y: (Double(image.height) - h) / 2, width: Double(image.width), height: h)
            }
            note = "the image is \(image.width)×\(image.height), the bundle makes \(width)×\(height): center-cropped to fit"
        }
        guard let cropped = image.cropping(to: crop.integral) else {
            throw PocketSDError.badInput("the image could not be cropped to \(width)×\(height)")
        }
        return (try draw(cropped, width: width, height: height), note)
    }

    static func draw(_ image: CGImage, width: Int, height: Int) throws -> CGImage {
        let space = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
        guard let context = CGContext(data: nil, width: width, height: height, bitsPerComponent: 8, bytesPerRow: 0,
                                      space: space, bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else {
            throw PocketSDError.badInput("cannot make a \(width)×\(height) drawing context")
        }
        context.interpolationQuality = .high
        context.setFillColor(CGColor(red: 1, green: 1, blue: 1, alpha: 1))  // transparent pixels become white
        context.fill(CGRect(x: 0, y: 0, width: width, height: height))
        context.draw(image, in: CGRect(x: 0, y: 0, width: width, height: height))
        guard let result = context.makeImage() else {
            throw PocketSDError.badInput("the image could not be converted to 8-bit RGB")
        }
        return result
    }

    /// A line drawing as 8-bit gray at width×height: scaled to fit and padded (not cropped) with the
    /// paper's own tone, so no stroke is cut off.
    public static func sketchGray(_ image: CGImage, width: Int, height: Int) throws -> (GrayImage, String?) {
        let original = try gray(image, width: image.width, height: image.height, fill: 255, fitInside: false)
        let paper = borderMedian(original)
        let fitted = try gray(image, width: width, height: height, fill: paper, fitInside: true)
        let aspectChanged = abs(Double(image.width) / Double(image.height) / (Double(width) / Double(height)) - 1) > aspectTolerance
        let note = aspectChanged ? "the sketch is \(image.width)×\(image.height): padded to \(width)×\(height) with its paper tone" : nil
        return (fitted, note)
    }

    static func gray(_ image: CGImage, width: Int, height: Int, fill: UInt8, fitInside: Bool) throws -> GrayImage {
        var pixels = [UInt8](repeating: fill, count: width * height)
        let ok = pixels.withUnsafeMutableBytes { buffer -> Bool in
            guard let context = CGContext(data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,
                                          bytesPerRow: width, space: CGColorSpaceCreateDeviceGray(),
                                          bitmapInfo: CGImageAlphaInfo.none.rawValue) else { return false }
            context.interpolationQuality = .high
            var rect = CGRect(x: 0, y: 0, width: width, height: height)
            if fitInside {
                let scale = min(Double(width) / Double(image.width), Double(height) / Double(image.height))
                let w = Double(image.width) * scale, h = Double(image.height) * scale
                rect = CGRect(x: (Double(width) - w) / 2, y: (Double(height) - h) / 2, width: w, height: h)
            }
            context.draw(image, in: rect)
            return true
        }
        guard ok else { throw PocketSDError.badInput("cannot read the sketch as grayscale") }
        return GrayImage(width: width, height: height, pixels: pixels)
    }

    static func borderMedian(_ image: GrayImage) -> UInt8 {
        let w = image.width, h = image.height
        var border: [UInt8] = []
        for x in 0..<w { border.append(image.pixels[x]); border.append(image.pixels[(h - 1) * w + x]) }
        for y in 0..<h { border.append(image.pixels[y * w]); border.append(image.pixels[y * w + w - 1]) }
        let sorted = border.sorted()
        return sorted[sorted.count / 2]
    }

    public static func cgImage(_ rgb: RGBImage) throws -> CGImage {
        let space = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
        guard let provider = CGDataProvider(data: Data(rgb.pixels) as CFData),
              let image = CGImage(width: rgb.width, height: rgb.height, bitsPerComponent: 8, bitsPerPixel: 24,
                                  bytesPerRow: rgb.width * 3, space: space,
                                  bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.none.rawValue),
                                  provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent) else {
            throw PocketSDError.badInput("cannot build an image from the cleaned sketch")
        }
        return image
    }

    /// The pixels of `image` as 8-bit RGB (alpha composited on white), for the loop's tensors.
    public static func rgb(_ image: CGImage) throws -> RGBImage {
        let w = image.width, h = image.height
        var rgba = [UInt8](repeating: 255, count: w * h * 4)
        let drawn = rgba.withUnsafeMutableBytes { buffer -> Bool in
            let space = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
            guard let context = CGContext(data: buffer.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4,
                                          space: space, bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            context.setFillColor(CGColor(red: 1, green: 1, blue: 1, alpha: 1))
            context.fill(CGRect(x: 0, y: 0, width: w, height: h))
            context.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard drawn else { throw PocketSDError.badInput("the image could not be read as 8-bit RGB") }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) {
            rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2]
        }
        return RGBImage(width: w, height: h, pixels: rgb)
    }

    /// An inpainting mask fitted exactly as the image it belongs to (same center crop), as 8-bit gray at the
    /// bundle's size; white = repaint.
    public static func mask(_ image: CGImage, width: Int, height: Int) throws -> GrayImage {
        let (fitted, _) = try fit(image, width: width, height: height)
        return try gray(fitted, width: width, height: height, fill: 0, fitInside: false)
    }

    /// PNG bytes of 8-bit RGB pixels with the report's text chunks.
    public static func pngData(_ rgb: RGBImage, text: [(key: String, value: String)]) throws -> Data {
        try pngData(cgImage(rgb), text: text)
    }

    /// PNG bytes of `image` with the report's text chunks (see `PNGText`).
    public static func pngData(_ image: CGImage, text: [(key: String, value: String)]) throws -> Data {
        let data = NSMutableData()
        guard let destination = CGImageDestinationCreateWithData(data as CFMutableData, UTType.png.identifier as CFString, 1, nil) else {
            throw PocketSDError.badInput("ImageIO cannot write PNG here")
        }
        CGImageDestinationAddImage(destination, image, nil)
        guard CGImageDestinationFinalize(destination) else {
            throw PocketSDError.badInput("encoding the PNG failed")
        }
        return try PNGText.insert(text, into: data as Data)
    }
}
#endif
