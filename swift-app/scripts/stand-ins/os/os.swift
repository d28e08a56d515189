// Stand-in for Apple's os module, only for type-checking on Linux (scripts/typecheck-engine.sh).
public func os_proc_available_memory() -> Int { 0 }
