import Foundation

/// `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` on the CPU, float32, reproduced in Swift.
///
/// The Python CLI draws its starting noise (and the VAE encoder's sample for image → image) from torch's CPU
/// generator; the app must draw the same numbers for a seed to give the same image. Apple's package has a
/// torch-compatible source, but it is internal to that package, so PocketSD keeps its own, written from torch's
/// algorithm and checked against numbers torch itself produced (Tests/…/Fixtures/rng.json):
///   - the generator is a 32-bit Mersenne Twister (MT19937) seeded with the low 32 bits of the seed;
///   - a tensor of 16 values or more is filled with uniform floats (24 random bits each), then turned into normals
///     by Box–Muller on blocks of 16 (value j pairs with j + 8); when the count is not a multiple of 16 the last 16
///     values are drawn again and transformed as one more block;
///   - fewer than 16 values come one at a time from a double-precision Box–Muller that keeps its second value
///     for the next call.
public struct TorchRandom: Sendable {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624
    private var cachedNormal: Double?

    public init(seed: UInt64) {
        state[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1..<624 {
            let previous = state[i - 1]
            state[i] = 1_812_433_253 &* (previous ^ (previous >> 30)) &+ UInt32(i)
        }
    }

    /// The next 32 random bits (MT19937).
    public mutating func next32() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            var value = state[(i + 397) % 624] ^ (y >> 1)
            if y & 1 != 0 { value ^= 0x9908_B0DF }
            state[i] = value
        }
        index = 0
    }

    /// Uniform in [0, 1) with 24 random bits, as torch draws a float.
    mutating func uniformFloat() -> Float {
        Float(next32() & 0x00FF_FFFF) * (1.0 / 16_777_216.0)
    }

    /// Uniform in [0, 1) with 53 random bits (two draws, the first one high), as torch draws a double.
    mutating func uniformDouble() -> Double {
        let high = UInt64(next32())
        let low = UInt64(next32())
        return Double(((high << 32) | low) & ((1 << 53) - 1)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One standard normal, double precision (torch's path for tensors under 16 values).
    mutating func normalDouble() -> Double {
        if let cached = cachedNormal {
            cachedNormal = nil
            return cached
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let radius = (-2.0 * log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        cachedNormal = radius * sin(theta)
        return radius * cos(theta)
    }

    /// `torch.randn(shape)` (float32).
    public mutating func normal(_ shape: [Int]) -> Tensor {
        let count = shape.reduce(1, *)
        guard count >= 16 else {
            return Tensor(shape: shape, scalars: (0..<count).map { _ in Float(normalDouble()) })
        }
        var data = (0..<count).map { _ in uniformFloat() }
        var start = 0
        while start + 16 <= count {
            Self.boxMuller16(&data, at: start)
            start += 16
        }
        if count % 16 != 0 {
            for i in (count - 16)..<count { data[i] = uniformFloat() }
            Self.boxMuller16(&data, at: count - 16)
        }
        return Tensor(shape: shape, scalars: data)
    }

    private static func boxMuller16(_ data: inout [Float], at start: Int) {
        for j in 0..<8 {
            let u1 = 1 - Double(data[start + j])
            let u2 = Double(data[start + j + 8])
            let radius = (-2 * log(u1)).squareRoot()
            let theta = 2 * Double.pi * u2
            data[start + j] = Float(radius * cos(theta))
            data[start + j + 8] = Float(radius * sin(theta))
        }
    }
}
