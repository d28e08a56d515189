import Foundation

/// What the app shows while models load or compile: one row per model, with its state and elapsed time.
///
/// The first load of a model on a device makes the OS compile it for the Neural Engine, minutes for a real SDXL
/// UNet; one static "loading…" line then looks like a hang. The board is fed with the residency's events and the
/// compiler's, and read by the view (which re-renders the elapsed time every second).
public struct LoadingBoard: Equatable, Sendable {
    public enum State: Equatable, Sendable {
        case waiting
        case compiling(since: Double)
        case compiled(seconds: Double)
        case loading(since: Double)
        case loaded(seconds: Double, first: Bool)
        case unloaded
    }

    public struct Row: Equatable, Sendable, Identifiable {
        public var name: String
        public var state: State
        public var id: String { name }

        /// "UnetChunk1  loading 42 s (first load: the OS compiles it for this device)".
        public func text(now: Double) -> String {
            switch state {
            case .waiting: return "\(name)  waiting"
            case .compiling(let since): return "\(name)  compiling the .mlpackage \(Self.clock(now - since))"
            case .compiled(let seconds): return "\(name)  compiled in \(Self.clock(seconds))"
            case .loading(let since): return "\(name)  loading \(Self.clock(now - since))"
            case .loaded(let seconds, let first): return "\(name)  loaded in \(Self.clock(seconds))" + (first ? " (first load)" : "")
            case .unloaded: return "\(name)  unloaded"
            }
        }

        static func clock(_ seconds: Double) -> String {
            let s = max(0, Int(seconds.rounded()))
            return s < 60 ? "\(s) s" : "\(s / 60) min \(s % 60) s"
        }
    }

    public private(set) var rows: [Row] = []

    public init(models: [String] = []) {
        rows = models.map { Row(name: $0, state: .waiting) }
    }

    public var isBusy: Bool {
        rows.contains { if case .loading = $0.state { return true }; if case .compiling = $0.state { return true }; return false }
    }

    public mutating func set(_ name: String, _ state: State) {
        if let i = rows.firstIndex(where: { $0.name == name }) {
            rows[i].state = state
        } else {
            rows.append(Row(name: name, state: state))
        }
    }

    public mutating func apply(_ event: ModelResidency.Event, at time: Double) {
        switch event {
        case .loadStarted(let name): set(name, .loading(since: time))
        case .loaded(let name, let seconds, let first): set(name, .loaded(seconds: seconds, first: first))
        case .unloaded(let name):
            // After a prewarm the row keeps its load time; "unloaded" only replaces a row that never said more.
            if let row = rows.first(where: { $0.name == name }), case .loaded = row.state { return }
            set(name, .unloaded)
        }
    }
}
