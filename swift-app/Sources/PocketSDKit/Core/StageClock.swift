import Foundation

/// Times the stages of one generation from the outside of Apple's pipeline.
///
/// `StableDiffusionXLPipeline.generateImages` runs text encoding, the denoising loop and decoding in one call.
/// Its only hooks are the text encoders (which we wrap) and the per-step progress handler, so the stages are
/// cut at those events:
///   text_encode  = time inside the text encoders' `encode` calls (prompt and negative prompt, both encoders);
///   unet_steps[i] = from the previous event (end of text encoding, or step i-1) to the progress call of step i;
///                   step 0 therefore also holds the latent set-up and, for image → image, the VAE encoder;
///   vae_decode   = from the last step's progress call to the return of `generateImages`.
/// A reference type so the text encoder wrappers inside the pipeline (value types) can report into it.
public final class StageClock: @unchecked Sendable {
    public typealias Clock = () -> Double

    private let now: Clock
    private let lock = NSLock()
    private var start: Double
    private var lastMark: Double
    private var textEncode: Double = 0
    private var steps: [Double] = []
    private var decode: Double?

    /// `now` returns seconds on a monotonic clock; injectable for tests.
    public init(now: @escaping Clock = StageClock.monotonicSeconds) {
        self.now = now
        let t = now()
        start = t
        lastMark = t
    }

    public static func monotonicSeconds() -> Double {
        Double(DispatchTime.now().uptimeNanoseconds) / 1e9
    }

    /// Starts a run: clears everything measured so far.
    public func begin() {
        lock.lock(); defer { lock.unlock() }
        start = now()
        lastMark = start
        textEncode = 0
        steps = []
        decode = nil
    }

    /// Runs `body` and adds its duration to text encoding; the step clock starts again after it.
    public func timeTextEncode<T>(_ body: () throws -> T) rethrows -> T {
        let t0 = now()
        defer {
            let t1 = now()
            lock.lock()
            textEncode += t1 - t0
            lastMark = t1
            lock.unlock()
        }
        return try body()
    }

    /// Call from the progress handler after each step; returns that step's seconds.
    @discardableResult
    public func markStep() -> Double {
        lock.lock(); defer { lock.unlock() }
        let t = now()
        let seconds = t - lastMark
        steps.append(seconds)
        lastMark = t
        return seconds
    }

    /// Call when `generateImages` returns: the time since the last step is the VAE decode.
    public func markDecoded() {
        lock.lock(); defer { lock.unlock() }
        let t = now()
        decode = t - lastMark
        lastMark = t
    }

    public var textEncodeSeconds: Double { lock.lock(); defer { lock.unlock() }; return textEncode }
    public var stepSeconds: [Double] { lock.lock(); defer { lock.unlock() }; return steps }
    public var decodeSeconds: Double { lock.lock(); defer { lock.unlock() }; return decode ?? 0 }
    public var elapsed: Double { lock.lock(); defer { lock.unlock() }; return now() - start }

    /// Times a whole closure (model loading) with the same clock.
    public func measure<T>(_ body: () throws -> T) rethrows -> (T, Double) {
        let t0 = now()
        let result = try body()
        return (result, now() - t0)
    }

    /// The report's `timings_s` for this run, `load` being what this run spent loading models.
    public func timings(load: Double) -> GenerationReport.Timings {
        GenerationReport.Timings(load: load, textEncode: textEncodeSeconds, unetSteps: stepSeconds,
                                 vaeDecode: decodeSeconds, total: load + elapsed)
    }
}
