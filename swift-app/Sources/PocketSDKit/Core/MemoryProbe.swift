import Foundation
#if canImport(Darwin)
import Darwin
#endif

/// Process memory as the OS counts it.
///
/// On iOS the number that matters is the *physical footprint* (`task_vm_info.phys_footprint`): it is what
/// Jetsam compares with the app's memory limit and what Xcode's memory gauge shows; RSS leaves out compressed
/// and some IOKit (GPU / Neural Engine) memory and can be far lower. The kernel also keeps the footprint's
/// high-water mark (`ledger_phys_footprint_peak`), which catches peaks between our samples.
/// On Linux (where only the core of this package builds) RSS comes from /proc and there is no footprint.
public struct MemorySample: Equatable, Sendable {
    public var residentBytes: UInt64
    public var footprintBytes: UInt64?
    /// Kernel high-water marks since the process started (nil where the OS does not keep one).
    public var peakResidentBytes: UInt64?
    public var peakFootprintBytes: UInt64?

    public init(residentBytes: UInt64, footprintBytes: UInt64? = nil, peakResidentBytes: UInt64? = nil, peakFootprintBytes: UInt64? = nil) {
        self.residentBytes = residentBytes
        self.footprintBytes = footprintBytes
        self.peakResidentBytes = peakResidentBytes
        self.peakFootprintBytes = peakFootprintBytes
    }
}

public enum MemoryProbe {
    public static func sample() -> MemorySample {
        #if canImport(Darwin)
        return darwinSample()
        #elseif os(Linux)
        return linuxSample()
        #else
        return MemorySample(residentBytes: 0)
        #endif
    }

    #if canImport(Darwin)
    private static func darwinSample() -> MemorySample {
        var info = task_vm_info_data_t()
        // TASK_VM_INFO_COUNT is a C macro Swift does not import: the struct's size in natural_t units.
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
        let result = withUnsafeMutablePointer(to: &info) { pointer in
            pointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
            }
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF, &usage)
        let peakRSS = UInt64(max(0, usage.ru_maxrss))  // bytes on Darwin (KiB on Linux)
        guard result == KERN_SUCCESS else {
            return MemorySample(residentBytes: 0, peakResidentBytes: peakRSS)
        }
        // The peak field exists from revision 4 of the struct on; an older kernel returns a shorter count.
        let peakOffset = MemoryLayout<task_vm_info_data_t>.offset(of: \task_vm_info_data_t.ledger_phys_footprint_peak) ?? Int.max
        let filledBytes = Int(count) * MemoryLayout<natural_t>.size
        let peakFootprint: UInt64? = filledBytes >= peakOffset + 8 ? UInt64(info.ledger_phys_footprint_peak) : nil
        return MemorySample(residentBytes: UInt64(info.resident_size), footprintBytes: UInt64(info.phys_footprint),
                            peakResidentBytes: peakRSS, peakFootprintBytes: peakFootprint)
    }
    #endif

    #if os(Linux)
    /// VmRSS / VmHWM from /proc/self/status (kB).
    static func linuxSample(status: String? = nil) -> MemorySample {
        let text = status ?? ((try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? "")
        func kB(_ key: String) -> UInt64? {
            for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if fields.count >= 2, let value = UInt64(fields[1]) { return value * 1024 }
            }
            return nil
        }
        return MemorySample(residentBytes: kB("VmRSS") ?? 0, peakResidentBytes: kB("VmHWM"))
    }
    #endif
}
