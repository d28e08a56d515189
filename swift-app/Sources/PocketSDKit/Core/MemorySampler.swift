import Foundation

/// Samples the process's memory on a background thread while a run goes, so each run has its own peak.
///
/// The kernel's high-water marks (`ledger_phys_footprint_peak`, `ru_maxrss`) only ever grow, so in an app that
/// runs twice they are "since launch" and the second run cannot be compared with the first. The sampler keeps the
/// largest footprint and resident size it saw between `start()` and `stop()` — every `interval` and at every
/// `mark()` (the engine marks each stage boundary and step) — and reports the kernel's lifetime marks beside them.
/// A peak shorter than the interval between two samples can be missed; the lifetime mark then still shows it.
public final class MemorySampler: @unchecked Sendable {
    public struct Result: Equatable, Sendable {
        public var peakResidentBytes: UInt64
        public var peakFootprintBytes: UInt64?
        public var lifetimePeakResidentBytes: UInt64?
        public var lifetimePeakFootprintBytes: UInt64?
        public var samples: Int
    }

    public static let defaultInterval = 0.05
    public static var methodDescription: String {
        #if canImport(Darwin)
        return "this run: physical footprint (task_vm_info.phys_footprint) and resident size sampled every 50 ms and at each stage and step; lifetime: the kernel's high-water marks (ledger_phys_footprint_peak, ru_maxrss) since launch"
        #else
        return "this run: VmRSS sampled every 50 ms and at each stage and step; lifetime: VmHWM"
        #endif
    }

    private let probe: () -> MemorySample
    private let interval: Double
    private let lock = NSLock()
    private var running = false
    private var wake = DispatchSemaphore(value: 0)
    private var finished = DispatchSemaphore(value: 0)
    private var peakResident: UInt64 = 0
    private var peakFootprint: UInt64?
    private var lastSample: MemorySample?
    private var count = 0

    public init(probe: @escaping () -> MemorySample = MemoryProbe.sample, interval: Double = MemorySampler.defaultInterval) {
        self.probe = probe
        self.interval = interval
    }

    /// Forgets earlier peaks and starts sampling (a second `start` without `stop` restarts the peaks only).
    public func start() {
        lock.lock()
        peakResident = 0
        peakFootprint = nil
        count = 0
        let alreadyRunning = running
        running = true
        if !alreadyRunning {
            wake = DispatchSemaphore(value: 0)
            finished = DispatchSemaphore(value: 0)
        }
        lock.unlock()
        mark()
        guard !alreadyRunning else { return }
        let thread = Thread { [self] in
            while isRunning {
                _ = wake.wait(timeout: .now() + interval)
                if isRunning { mark() }
            }
            finished.signal()
        }
        thread.name = "pocketsd.memory-sampler"
        thread.start()
    }

    private var isRunning: Bool { lock.lock(); defer { lock.unlock() }; return running }

    /// Takes a sample now; returns it.
    @discardableResult
    public func mark() -> MemorySample {
        let sample = probe()
        lock.lock()
        count += 1
        peakResident = max(peakResident, sample.residentBytes)
        if let footprint = sample.footprintBytes { peakFootprint = max(peakFootprint ?? 0, footprint) }
        lastSample = sample
        lock.unlock()
        return sample
    }

    /// Stops sampling (waits for the thread) and returns this run's peaks with the lifetime marks.
    @discardableResult
    public func stop() -> Result {
        let last = mark()
        lock.lock()
        let wasRunning = running
        running = false
        lock.unlock()
        if wasRunning {
            wake.signal()
            finished.wait()
        }
        return current(last: last)
    }

    /// The peaks so far (the run may still be going).
    public var peaks: Result { lock.lock(); let last = lastSample; lock.unlock(); return current(last: last) }

    private func current(last: MemorySample?) -> Result {
        lock.lock(); defer { lock.unlock() }
        return Result(peakResidentBytes: peakResident, peakFootprintBytes: peakFootprint,
                      lifetimePeakResidentBytes: last?.peakResidentBytes, lifetimePeakFootprintBytes: last?.peakFootprintBytes,
                      samples: count)
    }

    /// MiB with one decimal, as the Python report rounds.
    public static func megabytes(_ bytes: UInt64) -> Double {
        (Double(bytes) / 1_048_576 * 10).rounded() / 10
    }

    public static func report(_ result: Result, availableBefore: Int? = nil, weightsPeak: (bytes: Int, packages: [String])? = nil) -> GenerationReport.Memory {
        GenerationReport.Memory(
            peakRSSMB: megabytes(result.peakResidentBytes),
            peakFootprintMB: result.peakFootprintBytes.map(megabytes),
            lifetimePeakFootprintMB: result.lifetimePeakFootprintBytes.map(megabytes),
            lifetimePeakRSSMB: result.lifetimePeakResidentBytes.map(megabytes),
            availableBeforeMB: availableBefore.map { megabytes(UInt64(max(0, $0))) },
            modelWeightsPeakMB: weightsPeak.map { megabytes(UInt64($0.bytes)) },
            modelWeightsPeakPackages: weightsPeak?.packages ?? [],
            samples: result.samples)
    }
}
