import Foundation

/// A note on disk that a run is in progress, so the next launch can tell that the last one never finished.
///
/// iOS ends an app that goes past its memory limit (Jetsam) without running any of its code, so the app cannot
/// record the kill when it happens. Instead the engine writes this file when a run starts, updates it at each
/// stage, and deletes it when the run ends in any way the app sees (done, cancelled, failed, stopped because the
/// app went to the background). A file found at launch means the process died mid-run: most often Jetsam, but a
/// crash or the user swiping the app away while it ran leave the same trace, and the notice says so.
public struct RunJournal: Sendable {
    public struct Entry: Equatable, Sendable {
        public var started: Date
        public var prompt: String
        public var seed: UInt32
        public var bundle: String
        public var lowMemory: Bool
        public var stage: String
        public var step: Int?
        public var footprintMB: Double?
        public var availableBeforeMB: Double?
        public var plannedPeakMB: Double?

        public init(started: Date, prompt: String, seed: UInt32, bundle: String, lowMemory: Bool, stage: String = "loading",
                    step: Int? = nil, footprintMB: Double? = nil, availableBeforeMB: Double? = nil, plannedPeakMB: Double? = nil) {
            self.started = started
            self.prompt = prompt
            self.seed = seed
            self.bundle = bundle
            self.lowMemory = lowMemory
            self.stage = stage
            self.step = step
            self.footprintMB = footprintMB
            self.availableBeforeMB = availableBeforeMB
            self.plannedPeakMB = plannedPeakMB
        }

        var json: JSONValue {
            func num(_ x: Double?) -> JSONValue { x.map { .number($0) } ?? .null }
            return .object([
                "started": .string(RunJournal.dateFormatter.string(from: started)), "prompt": .string(prompt),
                "seed": .integer(Int(seed)), "bundle": .string(bundle), "low_memory": .bool(lowMemory), "stage": .string(stage),
                "step": step.map { .integer($0) } ?? .null, "footprint_mb": num(footprintMB),
                "available_before_mb": num(availableBeforeMB), "planned_peak_mb": num(plannedPeakMB),
            ])
        }

        init?(json: JSONValue) {
            guard let started = json["started"]?.string.flatMap(RunJournal.dateFormatter.date(from:)),
                  let prompt = json["prompt"]?.string, let seed = json["seed"]?.int, let stage = json["stage"]?.string else { return nil }
            self.init(started: started, prompt: prompt, seed: UInt32(truncatingIfNeeded: seed), bundle: json["bundle"]?.string ?? "",
                      lowMemory: json["low_memory"]?.bool ?? false, stage: stage, step: json["step"]?.int,
                      footprintMB: json["footprint_mb"]?.double, availableBeforeMB: json["available_before_mb"]?.double,
                      plannedPeakMB: json["planned_peak_mb"]?.double)
        }
    }

    static let dateFormatter: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter
    }()

    public let url: URL

    /// `folder`: the app's Application Support folder (not Documents: the note is not the user's file).
    public init(folder: URL) {
        url = folder.appendingPathComponent("run-in-progress.json")
    }

    public func begin(_ entry: Entry) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try write(entry)
    }

    /// Best effort: a failed update must not stop the run it describes.
    public func update(_ entry: Entry) {
        try? write(entry)
    }

    public func end() {
        try? FileManager.default.removeItem(at: url)
    }

    /// At launch: the entry of a run that never ended (and removes it, so the notice shows once).
    public func takeLeftover() -> Entry? {
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        end()
        guard let json = try? JSONValue.parse(data) else { return nil }
        return Entry(json: json)
    }

    private func write(_ entry: Entry) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(entry.json).write(to: url, options: .atomic)
    }

    /// The sentence the app shows at the next launch.
    public static func notice(for entry: Entry) -> String {
        var where_ = "while \(stageWords(entry.stage))"
        if let step = entry.step, entry.stage == "denoise" { where_ += " (step \(step))" }
        var sentence = entry.stage == "compiling" ? "The app stopped \(where_) without finishing"
            : "The last run (seed \(entry.seed)) stopped \(where_) without finishing"
        if let footprint = entry.footprintMB { sentence += ", using \(Int(footprint.rounded())) MB" }
        sentence += ": iOS most likely closed the app for using too much memory (a crash or closing the app from the app switcher look the same)."
        if !entry.lowMemory {
            sentence += " Turn on Low memory, or use a smaller bundle."
        } else {
            sentence += " Try a smaller bundle (768×768, chunked UNet) or close other apps."
        }
        return sentence
    }

    static func stageWords(_ stage: String) -> String {
        switch stage {
        case "loading": return "loading the models"
        case "compiling": return "compiling the bundle's models"
        case "text_encode": return "encoding the prompt"
        case "vae_encode": return "encoding the starting image"
        case "denoise": return "denoising"
        case "vae_decode": return "decoding the image"
        default: return stage
        }
    }
}
