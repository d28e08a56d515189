import Foundation
#if canImport(Darwin)
import Darwin
#endif
#if canImport(os) && !os(macOS)
import os
#endif

/// Facts about the machine for the report and the pre-flight check.
public enum DeviceInfo {
    /// "iPhone16,2" on an iPhone (hw.machine), "Mac14,7" on a Mac (hw.model); nil elsewhere.
    public static var model: String? {
        #if canImport(Darwin)
        #if os(macOS)
        return sysctlString("hw.model")
        #else
        return sysctlString("hw.machine")
        #endif
        #else
        return nil
        #endif
    }

    #if canImport(Darwin)
    static func sysctlString(_ name: String) -> String? {
        var size = 0
        guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: size)
        guard sysctlbyname(name, &buffer, &size, nil, 0) == 0 else { return nil }
        return String(cString: buffer)
    }
    #endif

    /// Bytes the app may still allocate before iOS ends it (`os_proc_available_memory`, iOS 13+). nil on macOS,
    /// which has no per-app limit of that kind, and on Linux.
    public static var availableMemory: Int? {
        #if canImport(os) && !os(macOS)
        let bytes = os_proc_available_memory()
        return bytes > 0 ? Int(bytes) : nil
        #else
        return nil
        #endif
    }
}
