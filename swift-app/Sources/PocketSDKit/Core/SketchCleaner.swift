import Foundation

/// 8-bit grayscale pixels, row-major.
public struct GrayImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height, "pixel count must be width × height")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    public init(width: Int, height: Int, fill: UInt8) {
        self.init(width: width, height: height, pixels: [UInt8](repeating: fill, count: width * height))
    }
}

/// 8-bit RGB pixels, row-major, interleaved.
public struct RGBImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3, "pixel count must be width × height × 3")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// Turns a line drawing into a starting image for image → image, as `pocketsd generate --sketch` does
/// (python/pocketsd/pipeline/inputs.py): threshold (Otsu), invert light-on-dark drawings, thicken thin
/// strokes (they would vanish in the VAE's 8× downsampling), close small gaps, fill enclosed areas, and paint
/// the filled shape in the prompt's object color on its background color.
///
/// Written by hand in plain Swift because the same code must run on iOS, macOS and Linux (tests) and no
/// library on all three offers binary morphology; images here are small (the model's own size).
/// With a bundled ControlNet the cleaned strokes also become its conditioning image (`ImageTensors.controlTensor`).
public enum SketchCleaner {
    public struct Result: Equatable, Sendable {
        /// The cleaned strokes (true = ink).
        public var lines: [Bool]
        /// Strokes plus every area they enclose.
        public var region: [Bool]
        public var start: RGBImage
        public var notes: [String]
    }

    public static func clean(_ gray: GrayImage, prompt: String) throws -> Result {
        guard let lo = gray.pixels.min(), let hi = gray.pixels.max(), Int(hi) - Int(lo) >= 32 else {
            throw PocketSDError.badInput("the sketch is blank (no contrast between lines and paper); draw lines on a plain background")
        }
        let w = gray.width, h = gray.height
        let threshold = otsuThreshold(gray.pixels)
        var ink = gray.pixels.map { Double($0) < threshold }
        // Lines are the minority of pixels whatever the polarity: light-on-dark drawings get inverted here.
        if ink.filter({ $0 }).count * 2 > ink.count { ink = ink.map { !$0 } }
        // A pen about 1 % of the image wide.
        let pen = max(1, Int((Double(min(w, h)) / 100).rounded()))
        ink = dilate(ink, width: w, height: h, iterations: pen)
        ink = erode(dilate(ink, width: w, height: h, iterations: pen), width: w, height: h, iterations: pen)
        let region = fillHoles(ink, width: w, height: h)

        var notes: [String] = []
        let lineCount = ink.filter { $0 }.count
        if Double(region.filter { $0 }.count) <= Double(lineCount) * 1.05 {
            notes.append("the sketch has no closed outline; using the strokes themselves as the shape")
        }
        let (object, background) = PromptColors.colors(in: prompt)
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) {
            let c = region[i] ? object : background
            rgb[3 * i] = c.0; rgb[3 * i + 1] = c.1; rgb[3 * i + 2] = c.2
        }
        return Result(lines: ink, region: region, start: RGBImage(width: w, height: h, pixels: rgb), notes: notes)
    }

    /// Otsu's threshold: the gray level that best separates the histogram into two classes.
    public static func otsuThreshold(_ pixels: [UInt8]) -> Double {
        var histogram = [Double](repeating: 0, count: 256)
        for p in pixels { histogram[Int(p)] += 1 }
        let total = Double(pixels.count)
        let sumAll = histogram.enumerated().reduce(0.0) { $0 + Double($1.offset) * $1.element }
        var weight0 = 0.0, sum0 = 0.0, best = 0.0, bestLevel = 0
        for level in 0..<256 {
            weight0 += histogram[level]
            sum0 += Double(level) * histogram[level]
            let weight1 = total - weight0
            guard weight0 > 0, weight1 > 0 else { continue }
            let mean0 = sum0 / weight0, mean1 = (sumAll - sum0) / weight1
            let between = weight0 * weight1 * (mean0 - mean1) * (mean0 - mean1)
            if between > best { best = between; bestLevel = level }
        }
        return Double(bestLevel) + 0.5
    }

    /// Binary dilation with the 4-neighbour cross, `iterations` times (scipy's default structure).
    static func dilate(_ mask: [Bool], width w: Int, height h: Int, iterations: Int) -> [Bool] {
        var current = mask
        for _ in 0..<iterations {
            var next = current
            for y in 0..<h {
                for x in 0..<w where !current[y * w + x] {
                    if (x > 0 && current[y * w + x - 1]) || (x < w - 1 && current[y * w + x + 1])
                        || (y > 0 && current[(y - 1) * w + x]) || (y < h - 1 && current[(y + 1) * w + x]) {
                        next[y * w + x] = true
                    }
                }
            }
            current = next
        }
        return current
    }

    /// Binary erosion with the same cross. Pixels outside the image count as set, so a stroke touching the
    /// edge survives the closing (scipy's default border would erode it; at the edge the two may differ).
    static func erode(_ mask: [Bool], width w: Int, height h: Int, iterations: Int) -> [Bool] {
        var current = mask
        for _ in 0..<iterations {
            var next = current
            for y in 0..<h {
                for x in 0..<w where current[y * w + x] {
                    if (x > 0 && !current[y * w + x - 1]) || (x < w - 1 && !current[y * w + x + 1])
                        || (y > 0 && !current[(y - 1) * w + x]) || (y < h - 1 && !current[(y + 1) * w + x]) {
                        next[y * w + x] = false
                    }
                }
            }
            current = next
        }
        return current
    }

    /// Everything not reachable from the border through non-ink pixels (4-connected) is inside a shape.
    static func fillHoles(_ ink: [Bool], width w: Int, height h: Int) -> [Bool] {
        var outside = [Bool](repeating: false, count: w * h)
        var stack: [Int] = []
        func push(_ i: Int) {
            if !ink[i] && !outside[i] { outside[i] = true; stack.append(i) }
        }
        for x in 0..<w { push(x); push((h - 1) * w + x) }
        for y in 0..<h { push(y * w); push(y * w + w - 1) }
        while let i = stack.popLast() {
            let x = i % w, y = i / w
            if x > 0 { push(i - 1) }
            if x < w - 1 { push(i + 1) }
            if y > 0 { push(i - w) }
            if y < h - 1 { push(i + w) }
        }
        return outside.map { !$0 }
    }
}

/// The object and background colors a prompt names ("a red square on a gray background"), with the
/// reference model's exact palette (CONTRACT.md) first, then a few common color names.
public enum PromptColors {
    public typealias RGB = (UInt8, UInt8, UInt8)

    static let objectPalette: [String: RGB] = [
        "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
        "purple": (140, 60, 190), "orange": (245, 140, 30),
        "black": (20, 20, 20), "white": (245, 245, 245), "gray": (128, 128, 128), "grey": (128, 128, 128),
        "pink": (255, 192, 203), "brown": (139, 69, 19), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
    ]
    static let backgroundPalette: [String: RGB] = [
        "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "grey": (128, 128, 128),
    ]
    static let backgroundWords: Set<String> = ["background", "backdrop", "ground"]
    public static let defaultObject: RGB = (128, 128, 128)
    public static let defaultBackground: RGB = (245, 245, 245)

    public static func colors(in prompt: String) -> (object: RGB, background: RGB) {
        let words = prompt.lowercased().split(separator: " ").map {
            $0.trimmingCharacters(in: CharacterSet(charactersIn: ".,;:!?\"'()"))
        }
        var object: RGB?
        var background: RGB?
        for (i, word) in words.enumerated() {
            let next = i + 1 < words.count ? words[i + 1] : ""
            if backgroundWords.contains(next) {
                background = background ?? backgroundPalette[word] ?? objectPalette[word]
            } else if object == nil, !backgroundWords.contains(word) {
                object = objectPalette[word]
            }
        }
        return (object ?? defaultObject, background ?? defaultBackground)
    }
}
