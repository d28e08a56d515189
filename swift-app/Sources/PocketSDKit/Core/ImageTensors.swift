import Foundation

/// Pixels ↔ tensors, with the Python side's arithmetic (python/pocketsd/pipeline/inputs.py and generate.to_pil),
/// so that the same PNG gives the same tensor and the same latents give the same PNG.
public enum ImageTensors {
    /// 8-bit RGB → (1, 3, H, W) in [-1, 1]: x / 127.5 − 1 (the VAE encoder's input).
    public static func tensor(_ image: RGBImage) -> Tensor {
        planar(image) { Float($0) / 127.5 - 1 }
    }

    /// 8-bit RGB → (1, 3, H, W) in [0, 1]: x / 255 (a ControlNet's conditioning image, as diffusers feeds it).
    public static func controlTensor(_ image: RGBImage) -> Tensor {
        planar(image) { Float($0) / 255 }
    }

    /// A stroke mask (true = ink) → the scribble ControlNet's image: white strokes on black, (1, 3, H, W) in [0, 1].
    public static func controlTensor(lines: [Bool], width: Int, height: Int) -> Tensor {
        let plane = lines.map { $0 ? Float(1) : 0 }
        return Tensor(shape: [1, 3, height, width], scalars: plane + plane + plane)
    }

    static func planar(_ image: RGBImage, _ f: (UInt8) -> Float) -> Tensor {
        let n = image.width * image.height
        var out = [Float](repeating: 0, count: 3 * n)
        for i in 0..<n {
            for c in 0..<3 { out[c * n + i] = f(image.pixels[3 * i + c]) }
        }
        return Tensor(shape: [1, 3, image.height, image.width], scalars: out)
    }

    /// The VAE decoder's (1, 3, H, W) output → 8-bit RGB: ((x / 2 + 0.5) clamped to [0, 1]) · 255, rounded half to even.
    public static func rgb(_ decoded: Tensor) throws -> RGBImage {
        guard decoded.shape.count == 4, decoded.shape[1] == 3 else {
            throw PocketSDError.badInput("the VAE decoder gave \(decoded.shape), not (1, 3, H, W); re-convert the bundle")
        }
        // max/min pass NaN through and UInt8(NaN) traps: refuse it here too, not only in the loop.
        try DiffusionLoop.checkFinite(decoded, "the VAE decoder")
        let h = decoded.shape[2], w = decoded.shape[3], n = h * w
        var pixels = [UInt8](repeating: 0, count: 3 * n)
        for i in 0..<n {
            for c in 0..<3 {
                let x = min(max(decoded.scalars[c * n + i] / 2 + 0.5, 0), 1)
                pixels[3 * i + c] = UInt8((x * 255).rounded(.toNearestOrEven))
            }
        }
        return RGBImage(width: w, height: h, pixels: pixels)
    }

    /// An inpainting mask at image size (white = repaint) → (1, 1, h, w) at latent size, as diffusers prepares it:
    /// binarized at one half, then nearest-neighbour downsampling.
    public static func latentMask(_ mask: GrayImage, latentHeight: Int, latentWidth: Int) -> Tensor {
        var out = [Float](repeating: 0, count: latentHeight * latentWidth)
        for y in 0..<latentHeight {
            let sy = y * mask.height / latentHeight
            for x in 0..<latentWidth {
                let sx = x * mask.width / latentWidth
                out[y * latentWidth + x] = Float(mask.pixels[sy * mask.width + sx]) / 255 >= 0.5 ? 1 : 0
            }
        }
        return Tensor(shape: [1, 1, latentHeight, latentWidth], scalars: out)
    }
}
