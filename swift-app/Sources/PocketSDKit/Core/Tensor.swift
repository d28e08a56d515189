import Foundation

/// A dense float32 array with a shape, row-major: what the loop passes between the networks and the scheduler.
///
/// The loop (`DiffusionLoop`) is plain Swift so that it builds and is tested on Linux; the engine converts to and
/// from Core ML's `MLMultiArray` at the model boundary only. The arithmetic here is the scheduler's and the
/// guidance's (a few element-wise passes over at most 4×128×128 latents per step), so plain loops suffice.
public struct Tensor: Equatable, Sendable {
    public private(set) var shape: [Int]
    public var scalars: [Float]

    public init(shape: [Int], scalars: [Float]) {
        precondition(shape.reduce(1, *) == scalars.count, "shape \(shape) does not hold \(scalars.count) values")
        self.shape = shape
        self.scalars = scalars
    }

    public init(shape: [Int], repeating value: Float) {
        self.init(shape: shape, scalars: [Float](repeating: value, count: shape.reduce(1, *)))
    }

    public static func zeros(_ shape: [Int]) -> Tensor { Tensor(shape: shape, repeating: 0) }

    public var count: Int { scalars.count }

    /// Size of axis 0 (the batch), 1 for a scalar shape.
    public var batch: Int { shape.first ?? 1 }

    public func reshaped(_ newShape: [Int]) -> Tensor { Tensor(shape: newShape, scalars: scalars) }

    /// Rows `range` of axis 0.
    public func rows(_ range: Range<Int>) -> Tensor {
        let rowSize = count / max(batch, 1)
        var newShape = shape
        newShape[0] = range.count
        return Tensor(shape: newShape, scalars: Array(scalars[(range.lowerBound * rowSize)..<(range.upperBound * rowSize)]))
    }

    /// Concatenation along axis 0; every part has the same shape past axis 0.
    public static func concatenating(_ parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        let tail = Array(parts[0].shape.dropFirst())
        precondition(parts.allSatisfy { Array($0.shape.dropFirst()) == tail }, "concatenating tensors of different shapes")
        return Tensor(shape: [parts.map(\.batch).reduce(0, +)] + tail, scalars: parts.flatMap(\.scalars))
    }

    /// Concatenation along the last axis (SDXL joins its two encoders' hidden states this way).
    /// Concatenation along axis 1 (channels) of (N, C_i, …) tensors with the same N and trailing shape.
    public static func concatenatingChannels(_ parts: [Tensor]) -> Tensor {
        let n = parts[0].shape[0]
        let rows = parts.map { $0.count / n }
        var out: [Float] = []
        out.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        for b in 0..<n {
            for (part, row) in zip(parts, rows) { out += part.scalars[(b * row)..<((b + 1) * row)] }
        }
        var shape = parts[0].shape
        shape[1] = parts.reduce(0) { $0 + $1.shape[1] }
        return Tensor(shape: shape, scalars: out)
    }

    public static func concatenatingLastAxis(_ parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        let lead = Array(parts[0].shape.dropLast())
        precondition(parts.allSatisfy { Array($0.shape.dropLast()) == lead }, "joining tensors of different leading shapes")
        let outer = lead.reduce(1, *)
        let widths = parts.map { $0.shape.last ?? 1 }
        var out: [Float] = []
        out.reserveCapacity(outer * widths.reduce(0, +))
        for i in 0..<outer {
            for (part, width) in zip(parts, widths) {
                out.append(contentsOf: part.scalars[(i * width)..<((i + 1) * width)])
            }
        }
        return Tensor(shape: lead + [widths.reduce(0, +)], scalars: out)
    }

    /// (B, T, D) → (B, D, 1, T): Apple's Neural Engine layout for `encoder_hidden_states`.
    public func toChannelsFirstSequence() -> Tensor {
        precondition(shape.count == 3)
        let (b, t, d) = (shape[0], shape[1], shape[2])
        var out = [Float](repeating: 0, count: count)
        for bi in 0..<b {
            for ti in 0..<t {
                for di in 0..<d {
                    out[(bi * d + di) * t + ti] = scalars[(bi * t + ti) * d + di]
                }
            }
        }
        return Tensor(shape: [b, d, 1, t], scalars: out)
    }

    /// Padded to `total` rows by repeating the last row (a batch of one → the model's fixed batch).
    public func repeatingRows(to total: Int) -> Tensor {
        guard batch < total else { return self }
        let last = rows(batch - 1..<batch)
        return .concatenating([self] + Array(repeating: last, count: total - batch))
    }

    public func mean() -> Float { scalars.isEmpty ? 0 : scalars.reduce(0, +) / Float(scalars.count) }

    public func map(_ f: (Float) -> Float) -> Tensor { Tensor(shape: shape, scalars: scalars.map(f)) }

    /// a·x + b·y, element-wise (shapes must match).
    public static func combine(_ a: Float, _ x: Tensor, _ b: Float, _ y: Tensor) -> Tensor {
        precondition(x.shape == y.shape, "combining \(x.shape) with \(y.shape)")
        var out = [Float](repeating: 0, count: x.count)
        x.scalars.withUnsafeBufferPointer { xs in
            y.scalars.withUnsafeBufferPointer { ys in
                for i in 0..<out.count { out[i] = a * xs[i] + b * ys[i] }
            }
        }
        return Tensor(shape: x.shape, scalars: out)
    }

    public static func * (s: Float, x: Tensor) -> Tensor { x.map { s * $0 } }
    public static func + (x: Tensor, y: Tensor) -> Tensor { combine(1, x, 1, y) }
    public static func - (x: Tensor, y: Tensor) -> Tensor { combine(1, x, -1, y) }

    /// Largest |a − b| over all elements (shapes must match): for tests and parity checks.
    public func maxAbsDifference(_ other: Tensor) -> Float {
        precondition(shape == other.shape)
        return zip(scalars, other.scalars).map { abs($0 - $1) }.max() ?? 0
    }
}
