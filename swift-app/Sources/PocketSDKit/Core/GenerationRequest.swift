import Foundation

/// Compute units as the contract spells them (`--compute-units`); the engine maps them to `MLComputeUnits`.
public enum ComputeUnitsChoice: String, CaseIterable, Codable, Sendable {
    case all
    case cpuOnly = "cpu_only"
    case cpuAndGPU = "cpu_and_gpu"
    case cpuAndNeuralEngine = "cpu_and_ne"
}

/// Schedulers Apple's `StableDiffusion` package implements, and how the contract's names map onto them.
///
/// The contract's `euler` and `ddim` do not exist in Apple's package. DPM-Solver++ 2M is the closest
/// deterministic solver it has, so those names run it and the report says so (`scheduler` is what ran,
/// `scheduler_requested` what was asked).
public enum SchedulerChoice: String, CaseIterable, Codable, Sendable {
    case dpmpp2m
    case pndm

    public struct Resolution: Equatable, Sendable {
        public let requested: String
        public let used: SchedulerChoice
        /// One line for the user when `used` is not what was asked.
        public let note: String?
    }

    public static let contractNames = ["euler", "dpmpp2m", "ddim"]

    public static func resolve(_ name: String) throws -> Resolution {
        let key = name.lowercased()
        if let exact = SchedulerChoice(rawValue: key) {
            return Resolution(requested: key, used: exact, note: nil)
        }
        if key == "euler" || key == "ddim" {
            return Resolution(requested: key, used: .dpmpp2m,
                              note: "scheduler \(key) is not in Apple's StableDiffusion package; running dpmpp2m (DPM-Solver++ 2M) instead")
        }
        throw PocketSDError.badInput("unknown scheduler \"\(name)\"; choose one of euler, dpmpp2m, ddim, pndm")
    }
}

/// What the user asked for, before a domain preset fills the gaps. nil means "not given".
public struct GenerationRequest: Equatable, Sendable {
    public var prompt: String
    public var negativePrompt: String?
    public var steps: Int?
    public var guidance: Double?
    public var seed: UInt32?
    public var scheduler: String?
    public var domain: String?
    /// A multifunction UNet's function to run, when the user names it rather than a domain.
    public var unetFunction: String?
    public var computeUnits: ComputeUnitsChoice = .all
    /// (width, height) the user expects; a bundle has fixed shapes, so this is only checked.
    public var size: (width: Int, height: Int)?
    public var imagePath: String?
    public var sketchPath: String?
    public var strength: Double?
    public var lowMemory: Bool = false

    public init(prompt: String) {
        self.prompt = prompt
    }

    public static func == (a: GenerationRequest, b: GenerationRequest) -> Bool {
        a.prompt == b.prompt && a.negativePrompt == b.negativePrompt && a.steps == b.steps && a.guidance == b.guidance
            && a.seed == b.seed && a.scheduler == b.scheduler && a.domain == b.domain && a.unetFunction == b.unetFunction
            && a.computeUnits == b.computeUnits && a.size?.width == b.size?.width && a.size?.height == b.size?.height
            && a.imagePath == b.imagePath && a.sketchPath == b.sketchPath && a.strength == b.strength
            && a.lowMemory == b.lowMemory
    }
}

/// A request with every value decided: explicit options first, then the domain preset, then defaults.
public struct ResolvedRequest: Equatable, Sendable {
    public var prompt: String
    public var expandedPrompt: String
    public var negativePrompt: String
    public var steps: Int
    public var guidance: Double
    public var seed: UInt32
    public var scheduler: SchedulerChoice.Resolution
    public var domain: String?
    /// The LoRA the domain asks for (file stem) and its scale, reported in `loras`.
    public var lora: DomainPreset.LoRA?
    public var unetFunction: String?
    public var computeUnits: ComputeUnitsChoice
    public var strength: Double?
    public var imagePath: String?
    public var sketchPath: String?
    public var lowMemory: Bool
    /// Lines to show the user (scheduler substituted, …).
    public var notes: [String]

    public static let defaultSteps = 20
    public static let defaultGuidance = 5.0
    public static let defaultScheduler = "dpmpp2m"
    /// As on the Python side: an image keeps its layout at 0.8, a sketch (a flat filled shape) at 0.75.
    public static let defaultImageStrength = 0.8
    public static let defaultSketchStrength = 0.75
}

extension GenerationRequest {
    /// Applies `catalog`'s preset (if a domain is named) and the defaults; checks ranges.
    /// `randomSeed` is called only when no seed was given (injectable for tests).
    public func resolve(catalog: DomainCatalog?, manifest: BundleManifest? = nil,
                        randomSeed: () -> UInt32 = { UInt32.random(in: 0...UInt32.max) }) throws -> ResolvedRequest {
        let trimmed = prompt.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty { throw PocketSDError.badInput("the prompt is empty; say what to draw") }

        var preset: DomainPreset?
        if let domain {
            guard let catalog else { throw PocketSDError.badInput("no domains file is available for --domain \(domain)") }
            preset = try catalog.preset(named: domain.trimmingCharacters(in: .whitespaces).lowercased())
        }
        let steps = self.steps ?? preset?.steps ?? ResolvedRequest.defaultSteps
        let guidance = self.guidance ?? preset?.guidance ?? ResolvedRequest.defaultGuidance
        if steps < 1 || steps > 1000 { throw PocketSDError.badInput("--steps must be between 1 and 1000, got \(steps)") }
        if guidance < 0 || guidance > 50 { throw PocketSDError.badInput("--guidance must be between 0 and 50, got \(guidance)") }
        let scheduler = try SchedulerChoice.resolve(self.scheduler ?? preset?.scheduler ?? ResolvedRequest.defaultScheduler)

        if imagePath != nil && sketchPath != nil {
            throw PocketSDError.badInput("give --image or --sketch, not both")
        }
        var strength: Double?
        if imagePath != nil || sketchPath != nil {
            strength = self.strength ?? (sketchPath != nil ? ResolvedRequest.defaultSketchStrength : ResolvedRequest.defaultImageStrength)
        } else if self.strength != nil {
            throw PocketSDError.badInput("--strength needs --image or --sketch")
        }
        if let s = strength, !(s > 0 && s <= 1) {
            throw PocketSDError.badInput("--strength must be in (0, 1], got \(s) (0.3 keeps the image, 1.0 ignores it)")
        }
        if let s = strength, Int(Double(steps) * s) < 1 {
            throw PocketSDError.badInput("--strength \(s) with \(steps) steps leaves no step to run; raise either")
        }

        var notes = scheduler.note.map { [$0] } ?? []
        var function = unetFunction
        if let manifest {
            if let size, (size.width, size.height) != (manifest.imageSize.width, manifest.imageSize.height) {
                throw PocketSDError.badInput(
                    "this bundle was converted for \(manifest.imageSize.width)x\(manifest.imageSize.height), not \(size.width)x\(size.height); "
                    + "re-run `pocketsd convert --size \(size.width)x\(size.height)` or drop --size")
            }
            if let function { try manifest.checkFunction(function) }
            function = function ?? manifest.unetFunction(forDomain: preset)
            if let lora = preset?.lora, manifest.unetFunctions.isEmpty == false, function != preset?.loraFunctionName {
                notes.append("the bundle has no UNet function for LoRA \(lora.file); running \(function ?? "the default UNet") "
                             + "(re-convert with `--lora-functions` to include it)")
            } else if let lora = preset?.lora, manifest.unetFunctions.isEmpty {
                notes.append("the bundle's UNet is not multifunction: LoRA \(lora.file) applies only if it was baked in at conversion")
            }
        }

        return ResolvedRequest(
            prompt: trimmed,
            expandedPrompt: preset?.expand(trimmed) ?? trimmed,
            negativePrompt: negativePrompt ?? preset?.negativePrompt ?? "",
            steps: steps,
            guidance: guidance,
            seed: seed ?? randomSeed(),
            scheduler: scheduler,
            domain: preset?.name,
            lora: preset?.lora,
            unetFunction: function,
            computeUnits: computeUnits,
            strength: strength,
            imagePath: imagePath,
            sketchPath: sketchPath,
            lowMemory: lowMemory,
            notes: notes)
    }
}
