import Foundation

/// The contract's JSON report, written beside each image (CONTRACT.md, "The report").
///
/// Encoded by hand rather than synthesized: the contract writes absent values as `null` (synthesized
/// `Encodable` drops nil keys) and its keys are snake_case. Past the contract it carries what the Python CLI adds
/// (`input`, `low_memory`, `memory_method`, `warnings`, `backend_details` with `compute_units`, `unet_function` and
/// `first_load_s`), so a report from a Mac compares field by field with one from `pocketsd generate`, plus what
/// only the app measures (see swift-app/README.md, "The report").
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
        /// Seconds spent loading models in this run (0 when the models were loaded already).
        public var load: Double
        public var textEncode: Double
        public var unetSteps: [Double]
        public var vaeDecode: Double
        /// Image → image only.
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
        /// This run's peaks, from samples taken during the run (see `MemorySampler`).
        public var peakRSSMB: Double
        public var peakFootprintMB: Double?
        /// The kernel's high-water marks since the process started (the app: since launch).
        public var lifetimePeakFootprintMB: Double?
        public var lifetimePeakRSSMB: Double?
        /// What the OS said the app could still allocate before loading (iOS), in MB.
        public var availableBeforeMB: Double?
        /// The most model weights resident at once in this run, by the memory plan's bytes, and which packages.
        public var modelWeightsPeakMB: Double?
        public var modelWeightsPeakPackages: [String]
        public var samples: Int

        public init(peakRSSMB: Double, peakFootprintMB: Double?, lifetimePeakFootprintMB: Double? = nil, lifetimePeakRSSMB: Double? = nil,
                    availableBeforeMB: Double? = nil, modelWeightsPeakMB: Double? = nil, modelWeightsPeakPackages: [String] = [], samples: Int = 0) {
            self.peakRSSMB = peakRSSMB
            self.peakFootprintMB = peakFootprintMB
            self.lifetimePeakFootprintMB = lifetimePeakFootprintMB
            self.lifetimePeakRSSMB = lifetimePeakRSSMB
            self.availableBeforeMB = availableBeforeMB
            self.modelWeightsPeakMB = modelWeightsPeakMB
            self.modelWeightsPeakPackages = modelWeightsPeakPackages
            self.samples = samples
        }
    }

    /// Where each model ran and how long it took to load the first time (the Python backend's `backend_details`).
    public struct BackendDetails: Equatable, Sendable {
        public var computeUnits: String?
        public var unetFunction: String?
        /// First (cold) load of each model in this process: includes the OS compiling it for this device.
        public var firstLoadSeconds: [String: Double]
        /// `.mlpackage` compiled on this device, seconds per model (only the run that compiled them has them).
        public var compileSeconds: [String: Double]
        /// Share of each model's operations per device (`MLComputePlan`); nil where the OS has no compute plan.
        public var computePlan: [String: ComputePlanSummary]?
        public var computePlanNote: String?
        /// The memory plan's largest stage for this run's schedule.
        public var plannedPeakStage: String?
        public var plannedPeakMB: Double?

        public init(computeUnits: String? = nil, unetFunction: String? = nil, firstLoadSeconds: [String: Double] = [:],
                    compileSeconds: [String: Double] = [:], computePlan: [String: ComputePlanSummary]? = nil, computePlanNote: String? = nil,
                    plannedPeakStage: String? = nil, plannedPeakMB: Double? = nil) {
            self.computeUnits = computeUnits
            self.unetFunction = unetFunction
            self.firstLoadSeconds = firstLoadSeconds
            self.compileSeconds = compileSeconds
            self.computePlan = computePlan
            self.computePlanNote = computePlanNote
            self.plannedPeakStage = plannedPeakStage
            self.plannedPeakMB = plannedPeakMB
        }
    }

    /// What the run started from (the Python report's `input`).
    public struct Input: Equatable, Sendable {
        public var image: String?
        public var sketch: String?
        public var mask: String?
        public var strength: Double?
        public var controlnet: String?
        /// With a ControlNet only, as the Python report writes them: its scale and its [start, end] share.
        public var controlnetScale: Double?
        public var controlGuidance: [Double]?
        /// With a mask only, as the Python report writes them.
        public var maskBlur: Int?
        public var pasteBack: Bool?

        public init(image: String? = nil, sketch: String? = nil, mask: String? = nil, strength: Double? = nil, controlnet: String? = nil,
                    controlnetScale: Double? = nil, controlGuidance: [Double]? = nil) {
            self.image = image
            self.sketch = sketch
            self.mask = mask
            self.strength = strength
            self.controlnet = controlnet
            self.controlnetScale = controlnetScale
            self.controlGuidance = controlGuidance
        }
    }

    public var pocketsdVersion: String
    public var prompt: String
    public var expandedPrompt: String
    public var negativePrompt: String?
    public var seed: UInt32
    public var steps: Int
    public var guidance: Double
    public var scheduler: String
    /// [width, height]
    public var size: [Int]
    public var backend: String = "coreml"
    public var computeUnits: String?
    public var domain: String?
    public var loras: [LoRAEntry]
    public var model: Model
    public var timings: Timings
    /// The machine: a hardware model such as "iPhone16,2" or "Mac14,7".
    public var device: String?
    public var memory: Memory
    public var memoryMethod: String
    public var output: String
    public var input: Input
    public var lowMemory: Bool
    public var warnings: [String]
    public var backendDetails: BackendDetails
    public var engine: String = "pocketsd-swift (PocketSD's loop on Apple's Core ML)"

    public init(request: ResolvedRequest, size: [Int], model: Model, timings: Timings, memory: Memory, output: String,
                backendDetails: BackendDetails = BackendDetails(), device: String? = nil, warnings: [String] = [],
                memoryMethod: String = MemorySampler.methodDescription, pocketsdVersion: String = PocketSDKitInfo.version) {
        self.pocketsdVersion = pocketsdVersion
        self.prompt = request.prompt
        self.expandedPrompt = request.expandedPrompt
        self.negativePrompt = request.negativePrompt
        self.seed = request.seed
        self.steps = request.steps
        self.guidance = request.guidance
        self.scheduler = request.scheduler.rawValue
        self.size = size
        self.computeUnits = request.computeUnits.rawValue
        self.domain = request.domain
        self.loras = request.lora.map { [LoRAEntry(file: $0.file, scale: $0.scale)] } ?? []
        self.model = model
        self.timings = timings
        self.device = device
        self.memory = memory
        self.memoryMethod = memoryMethod
        self.output = output
        var input = Input(image: request.imagePath, sketch: request.sketchPath, mask: request.maskPath,
                          strength: request.strength, controlnet: request.controlNet,
                          controlnetScale: request.controlNet == nil ? nil : request.controlScale,
                          controlGuidance: request.controlNet == nil ? nil : [request.controlGuidanceStart, request.controlGuidanceEnd])
        if request.maskPath != nil {
            input.maskBlur = request.maskBlur
            input.pasteBack = request.pasteBack
        }
        self.input = input
        self.lowMemory = request.lowMemory
        self.warnings = request.notes + warnings
        var details = backendDetails
        details.computeUnits = details.computeUnits ?? request.computeUnits.rawValue
        details.unetFunction = details.unetFunction ?? request.unetFunction
        self.backendDetails = details
    }

    public var unetFunction: String? { backendDetails.unetFunction }
    public var firstLoadSeconds: [String: Double] { backendDetails.firstLoadSeconds }

    /// The report as a JSON tree with the contract's keys (nil → null).
    public var json: JSONValue {
        func num(_ x: Double?) -> JSONValue { x.map { .number($0) } ?? .null }
        func str(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        var inputJSON: [String: JSONValue] = [
            "image": str(input.image), "sketch": str(input.sketch), "mask": str(input.mask),
            "strength": num(input.strength), "controlnet": str(input.controlnet),
        ]
        // Present with a ControlNet only, as in the Python report (pocketsd/pipeline/session.py).
        if let scale = input.controlnetScale { inputJSON["controlnet_scale"] = .number(scale) }
        if let share = input.controlGuidance { inputJSON["control_guidance"] = .array(share.map { .number($0) }) }
        if let blur = input.maskBlur { inputJSON["mask_blur"] = .integer(blur) }
        if let paste = input.pasteBack { inputJSON["paste_back"] = .bool(paste) }
        func seconds(_ table: [String: Double]) -> JSONValue { .object(table.mapValues { .number($0) }) }
        var timingsObject: [String: JSONValue] = [
            "load": .number(timings.load),
            "text_encode": .number(timings.textEncode),
            "unet_steps": .array(timings.unetSteps.map { .number($0) }),
            "vae_decode": .number(timings.vaeDecode),
            "total": .number(timings.total),
        ]
        if let encode = timings.vaeEncode { timingsObject["vae_encode"] = .number(encode) }
        let plan: JSONValue = backendDetails.computePlan.map { table in .object(table.mapValues(\.json)) } ?? .null
        return .object([
            "pocketsd_version": .string(pocketsdVersion),
            "prompt": .string(prompt),
            "expanded_prompt": .string(expandedPrompt),
            "negative_prompt": str(negativePrompt),
            "seed": .integer(Int(seed)),
            "steps": .integer(steps),
            "guidance": .number(guidance),
            "scheduler": .string(scheduler),
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
            "device": str(device),
            "memory": .object([
                "peak_rss_mb": .number(memory.peakRSSMB),
                "peak_footprint_mb": num(memory.peakFootprintMB),
                "cuda_peak_mb": .null,
                "mps_peak_mb": .null,
                "lifetime_peak_footprint_mb": num(memory.lifetimePeakFootprintMB),
                "lifetime_peak_rss_mb": num(memory.lifetimePeakRSSMB),
                "available_before_mb": num(memory.availableBeforeMB),
                "model_weights_peak_mb": num(memory.modelWeightsPeakMB),
                "model_weights_peak_packages": .array(memory.modelWeightsPeakPackages.map { .string($0) }),
                "samples": .integer(memory.samples),
            ]),
            "memory_method": .string(memoryMethod),
            "output": .string(output),
            "input": .object(inputJSON),
            "low_memory": .bool(lowMemory),
            // The Python report's key: dense or packed 4-bit weights of a compressed model run by torch; null for a
            // Core ML bundle, whose weights the converter fixed (python/pocketsd/pipeline/session.py).
            "unet_mode": .null,
            "warnings": .array(warnings.map { .string($0) }),
            "backend_details": .object([
                "compute_units": str(backendDetails.computeUnits),
                "unet_function": str(backendDetails.unetFunction),
                "first_load_s": seconds(backendDetails.firstLoadSeconds),
                "compile_s": seconds(backendDetails.compileSeconds),
                "compute_plan": plan,
                "compute_plan_note": str(backendDetails.computePlanNote),
                "planned_peak_stage": str(backendDetails.plannedPeakStage),
                "planned_peak_mb": num(backendDetails.plannedPeakMB),
            ]),
            "engine": .string(engine),
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
            ("steps", String(steps)), ("guidance", Self.plain(guidance)), ("scheduler", scheduler),
            ("model", "\(model.path) (\(model.kind))"), ("compute_units", computeUnits), ("device", device),
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
