import Foundation

/// Seconds per stage of one generation, as the Python side's `RunTimer` keeps them: named stages (load,
/// text_encode, vae_encode, vae_decode) add up, denoising steps are kept one by one. Loading is counted apart from
/// the work it precedes, so `text_encode` is the encoders' work and not their load.
/// A reference type: the loop and the engine add to the same timer from one thread at a time.
public final class RunTimer: @unchecked Sendable {
    public typealias Clock = () -> Double

    private let now: Clock
    private let lock = NSLock()
    private var started: Double
    private var stageSeconds: [String: Double] = [:]
    private var stepSeconds: [Double] = []

    /// `now` returns seconds on a monotonic clock; injectable for tests.
    public init(now: @escaping Clock = RunTimer.monotonicSeconds) {
        self.now = now
        started = now()
    }

    public static func monotonicSeconds() -> Double {
        Double(DispatchTime.now().uptimeNanoseconds) / 1e9
    }

    /// Runs `body` and adds its duration to `stage` (also when it throws).
    public func time<T>(_ stage: String, _ body: () throws -> T) rethrows -> T {
        let t0 = now()
        defer { add(stage, seconds: now() - t0) }
        return try body()
    }

    public func add(_ stage: String, seconds: Double) {
        lock.lock(); defer { lock.unlock() }
        stageSeconds[stage, default: 0] += seconds
    }

    public func step(_ seconds: Double) {
        lock.lock(); defer { lock.unlock() }
        stepSeconds.append(seconds)
    }

    public func seconds(_ stage: String) -> Double { lock.lock(); defer { lock.unlock() }; return stageSeconds[stage] ?? 0 }
    public var steps: [Double] { lock.lock(); defer { lock.unlock() }; return stepSeconds }
    public var elapsed: Double { now() - started }
    public var clock: Clock { now }

    /// The report's `timings_s`; `vae_encode` only when an image was encoded.
    public func timings() -> GenerationReport.Timings {
        lock.lock(); defer { lock.unlock() }
        return GenerationReport.Timings(load: stageSeconds["load"] ?? 0, textEncode: stageSeconds["text_encode"] ?? 0,
                                        unetSteps: stepSeconds, vaeDecode: stageSeconds["vae_decode"] ?? 0,
                                        vaeEncode: stageSeconds["vae_encode"], total: now() - started)
    }
}
