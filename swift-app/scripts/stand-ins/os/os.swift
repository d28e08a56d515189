// Stand-in for Apple's os module, only for type-checking on Linux (scripts/typecheck-engine.sh).
@available(iOS 13.0, *)
@available(macOS, unavailable)
public func os_proc_available_memory() -> Int { 0 }
