import Foundation

/// The contract's JSON report, written beside each image (CONTRACT.md, "The report").
///
/// Encoded by hand rather than synthesized: the contract writes absent values as `null` (synthesized
/// `Encodable` drops nil keys) and its keys are snake_case. Fields past the contract are the ones the Python
/// Core ML backend adds too (`unet_function`, `first_load_s`) plus `scheduler_requested`, `engine`, `notes`
/// and `timings_s.vae_encode`; swift-app/README.md lists them.
public struct GenerationReport: Equatable, Sendable {
    public struct Model: Equatable, Sendable {
        public var path: String
        public var kind: String = "coreml"
        public var unetBytes: Int?
        public var bitsPerWeight: Double?

        public init(path: String, unetBytes: Int?, bitsPerWeight: Double?) {
            self.path = path
            self.unetBytes = unetBytes
            self.bitsPerWeight = bitsPerWeight
        }
    }

    public struct LoRAEntry: Equatable, Sendable {
        public var file: String
        public var scale: Double
        public init(file: String, scale: Double) {
            self.file = file
            self.scale = scale
        }
    }

    public struct Timings: Equatable, Sendable {
        /// Seconds spent loading models in this run (0 when the app reused loaded models).
        public var load: Double
        public var textEncode: Double
        public var unetSteps: [Double]
        public var vaeDecode: Double
        /// Image → image only: the VAE encoder's share (nil when the pipeline does not expose it apart).
        public var vaeEncode: Double?
        public var total: Double

        public init(load: Double, textEncode: Double, unetSteps: [Double], vaeDecode: Double, vaeEncode: Double? = nil, total: Double) {
            self.load = load
            self.textEncode = textEncode
            self.unetSteps = unetSteps
            self.vaeDecode = vaeDecode
            self.vaeEncode = vaeEncode
            self.total = total
        }

        public var stepStats: StepStats { StepStats(unetSteps) }
    }

    public struct Memory: Equatable, Sendable {
        public var peakRSSMB: Double
        public var peakFootprintMB: Double?
        public init(peakRSSMB: Double, peakFootprintMB: Double?) {
            self.peakRSSMB = peakRSSMB
            self.peakFootprintMB = peakFootprintMB
        }
    }

    public var pocketsdVersion: String
    public var prompt: String
    public var expandedPrompt: String
    public var negativePrompt: String
    public var seed: UInt32
    public var steps: Int
    public var guidance: Double
    public var scheduler: String
    public var schedulerRequested: String
    /// [width, height]
    public var size: [Int]
    public var backend: String = "coreml"
    public var computeUnits: String?
    public var domain: String?
    public var loras: [LoRAEntry]
    public var model: Model
    public var timings: Timings
    public var memory: Memory
    public var output: String
    public var unetFunction: String?
    /// First (cold) load of each model in this process, in seconds: includes the on-device compile for the
    /// Neural Engine unless the OS had it cached.
    public var firstLoadSeconds: [String: Double]
    public var engine: String = "pocketsd-swift (Apple StableDiffusion package)"
    public var notes: [String]

    public init(request: ResolvedRequest, size: [Int], model: Model, timings: Timings, memory: Memory, output: String,
                firstLoadSeconds: [String: Double] = [:], pocketsdVersion: String = PocketSDKitInfo.version) {
        self.pocketsdVersion = pocketsdVersion
        self.prompt = request.prompt
        self.expandedPrompt = request.expandedPrompt
        self.negativePrompt = request.negativePrompt
        self.seed = request.seed
        self.steps = request.steps
        self.guidance = request.guidance
        self.scheduler = request.scheduler.used.rawValue
        self.schedulerRequested = request.scheduler.requested
        self.size = size
        self.computeUnits = request.computeUnits.rawValue
        self.domain = request.domain
        self.loras = request.lora.map { [LoRAEntry(file: $0.file, scale: $0.scale)] } ?? []
        self.model = model
        self.timings = timings
        self.memory = memory
        self.output = output
        self.unetFunction = request.unetFunction
        self.firstLoadSeconds = firstLoadSeconds
        self.notes = request.notes
    }

    /// The report as a JSON tree with the contract's keys (nil → null).
    public var json: JSONValue {
        func num(_ x: Double?) -> JSONValue { x.map { .number($0) } ?? .null }
        func str(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        var timingsObject: [String: JSONValue] = [
            "load": .number(timings.load),
            "text_encode": .number(timings.textEncode),
            "unet_steps": .array(timings.unetSteps.map { .number($0) }),
            "vae_decode": .number(timings.vaeDecode),
            "total": .number(timings.total),
        ]
        if let encode = timings.vaeEncode { timingsObject["vae_encode"] = .number(encode) }
        return .object([
            "pocketsd_version": .string(pocketsdVersion),
            "prompt": .string(prompt),
            "expanded_prompt": .string(expandedPrompt),
            "negative_prompt": .string(negativePrompt),
            "seed": .integer(Int(seed)),
            "steps": .integer(steps),
            "guidance": .number(guidance),
            "scheduler": .string(scheduler),
            "scheduler_requested": .string(schedulerRequested),
            "size": .array(size.map { .integer($0) }),
            "backend": .string(backend),
            "compute_units": str(computeUnits),
            "domain": str(domain),
            "loras": .array(loras.map { .object(["file": .string($0.file), "scale": .number($0.scale)]) }),
            "model": .object([
                "path": .string(model.path),
                "kind": .string(model.kind),
                "unet_bytes": model.unetBytes.map { .integer($0) } ?? .null,
                "bits_per_weight": num(model.bitsPerWeight),
            ]),
            "timings_s": .object(timingsObject),
            "memory": .object([
                "peak_rss_mb": .number(memory.peakRSSMB),
                "peak_footprint_mb": num(memory.peakFootprintMB),
                "cuda_peak_mb": .null,
            ]),
            "output": .string(output),
            "unet_function": str(unetFunction),
            "first_load_s": .object(firstLoadSeconds.mapValues { .number($0) }),
            "engine": .string(engine),
            "notes": .array(notes.map { .string($0) }),
        ])
    }

    /// Pretty, key-sorted JSON text (stable diffs between runs).
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(json)
    }

    /// PNG text chunks, under the same keys the Python side writes (`prompt`, `pocketsd:<key>`, `Software`).
    public var pngText: [(key: String, value: String)] {
        var entries: [(String, String)] = [("prompt", prompt)]
        let values: [(String, String?)] = [
            ("expanded_prompt", expandedPrompt), ("negative_prompt", negativePrompt), ("seed", String(seed)),
            ("steps", String(steps)), ("guidance", Self.plain(guidance)), ("scheduler", scheduler), ("model", model.path),
        ]
        for (key, value) in values { if let value { entries.append(("pocketsd:\(key)", value)) } }
        entries.append(("Software", "pocketsd \(pocketsdVersion) (swift)"))
        return entries.map { (key: $0.0, value: $0.1) }
    }

    /// 5.0 → "5.0", 7.5 → "7.5" (as Python's str(float) prints them).
    static func plain(_ x: Double) -> String {
        x == x.rounded() && abs(x) < 1e15 ? String(format: "%.1f", x) : String(x)
    }
}

/// Mean / median / min / max of the per-step times, for the stats panel and the command line summary.
public struct StepStats: Equatable, Sendable {
    public let count: Int
    public let mean: Double
    public let median: Double
    public let min: Double
    public let max: Double

    public init(_ samples: [Double]) {
        count = samples.count
        guard !samples.isEmpty else {
            mean = 0; median = 0; min = 0; max = 0
            return
        }
        let sorted = samples.sorted()
        mean = samples.reduce(0, +) / Double(samples.count)
        let mid = sorted.count / 2
        median = sorted.count % 2 == 0 ? (sorted[mid - 1] + sorted[mid]) / 2 : sorted[mid]
        min = sorted.first!
        max = sorted.last!
    }
}

public enum PocketSDKitInfo {
    /// The version of PocketSD this app belongs to (python/pocketsd/__init__.py keeps the same number).
    public static let version = "0.1.0"
}
