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

    /// An inpainting mask read as the Python CLI reads it (`inputs.load_mask`, `generate.latent_mask`).
    public struct InpaintMask: Sendable {
        /// (1, 1, H, W): 1 in the hole, falling to 0 over `blur` px outside it (the paste-back's blend).
        public let alpha: Tensor
        /// (1, 1, h, w): 1 for a latent cell any of whose pixels has alpha > 0 (repainted), 0 for one kept. Taken
        /// from the feathered alpha, so the repainted latents cover the whole edge the paste-back blends over.
        public let latent: Tensor
    }

    /// A mask at image size (white = repaint) → the hole (pixels ≥ 128), its alpha (smoothstep of 1 − d / (blur + 1),
    /// d the Euclidean distance to the hole), and the latent mask (any pixel of an 8×8 cell with alpha > 0).
    /// An empty or a full hole is refused, as on the Python side: nothing to repaint, or not inpainting.
    public static func inpaintMask(_ mask: GrayImage, blur: Int, latentHeight: Int, latentWidth: Int) throws -> InpaintMask {
        let w = mask.width, h = mask.height
        let hole = mask.pixels.map { $0 >= 128 }
        guard hole.contains(true) else {
            throw PocketSDError.badInput("the mask is empty at \(w)×\(h): nothing to repaint (white marks the area to repaint, black what to keep)")
        }
        guard hole.contains(false) else {
            throw PocketSDError.badInput("the mask covers the whole image: that is text → image (drop --image and --mask) or image → image (drop --mask)")
        }
        var alpha = hole.map { $0 ? Float(1) : 0 }
        if blur > 0 {
            // Only distances below blur + 1 give a non-zero alpha, and every hole pixel that close lies in the
            // (2·reach + 1)² window: the window's minimum is the exact distance transform where it matters.
            let reach = blur + 1
            for y in 0..<h {
                for x in 0..<w where !hole[y * w + x] {
                    var best = Int.max
                    for dy in max(-reach, -y)...min(reach, h - 1 - y) {
                        for dx in max(-reach, -x)...min(reach, w - 1 - x) where hole[(y + dy) * w + x + dx] {
                            best = min(best, dx * dx + dy * dy)
                        }
                    }
                    guard best < reach * reach else { continue }
                    let t = min(max(1 - Double(best).squareRoot() / Double(reach), 0), 1)
                    alpha[y * w + x] = Float(t * t * (3 - 2 * t))  // smoothstep: no kink where the feather ends
                }
            }
        }
        let fy = h / latentHeight, fx = w / latentWidth
        var latent = [Float](repeating: 0, count: latentHeight * latentWidth)
        for ly in 0..<latentHeight {
            for lx in 0..<latentWidth {
                cell: for y in (ly * fy)..<min((ly + 1) * fy, h) {
                    for x in (lx * fx)..<min((lx + 1) * fx, w) where alpha[y * w + x] > 0 {
                        latent[ly * latentWidth + lx] = 1
                        break cell
                    }
                }
            }
        }
        return InpaintMask(alpha: Tensor(shape: [1, 1, h, w], scalars: alpha),
                           latent: Tensor(shape: [1, 1, latentHeight, latentWidth], scalars: latent))
    }

    /// The original wherever `alpha` is 0, the generated image where it is 1, blended between (the Python loop's
    /// `paste_back`), on (1, 3, H, W) tensors in [-1, 1].
    public static func pasteBack(decoded: Tensor, original: Tensor, alpha: Tensor) -> Tensor {
        let plane = alpha.count
        var out = decoded.scalars
        for i in 0..<out.count {
            let a = alpha.scalars[i % plane]
            out[i] = original.scalars[i] * (1 - a) + decoded.scalars[i] * a
        }
        return Tensor(shape: decoded.shape, scalars: out)
    }
}
