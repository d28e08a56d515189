import Foundation

/// Compute units as the contract spells them (`--compute-units`); the engine maps them to `MLComputeUnits`.
public enum ComputeUnitsChoice: String, CaseIterable, Codable, Sendable {
    case all
    case cpuOnly = "cpu_only"
    case cpuAndGPU = "cpu_and_gpu"
    case cpuAndNeuralEngine = "cpu_and_ne"

    /// Apple's guidance for Stable Diffusion on iPhone is CPU + Neural Engine: `.all` lets Core ML put layers on
    /// the GPU, which costs memory and is slower there. On a Mac the default stays `all`, as `pocketsd generate`'s.
    public static var platformDefault: ComputeUnitsChoice {
        #if os(iOS)
        return .cpuAndNeuralEngine
        #else
        return .all
        #endif
    }
}

extension SchedulerKind {
    /// The contract's scheduler names; anything else is refused in one line.
    public static func resolve(_ name: String) throws -> SchedulerKind {
        if let kind = SchedulerKind(rawValue: name.lowercased()) { return kind }
        throw PocketSDError.badInput("unknown scheduler \"\(name)\"; choose one of \(allCases.map(\.rawValue).joined(separator: ", "))")
    }
}

/// Low memory (each model loaded for its stage only) is the default on iPhone, where the whole SDXL pipeline does
/// not fit the app's memory limit; on a Mac the models stay loaded between runs.
public enum PlatformDefaults {
    public static var lowMemory: Bool {
        #if os(iOS)
        return true
        #else
        return false
        #endif
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
    public var computeUnits: ComputeUnitsChoice = .platformDefault
    /// (width, height) the user expects; a bundle has fixed shapes, so this is only checked.
    public var size: (width: Int, height: Int)?
    public var imagePath: String?
    public var sketchPath: String?
    /// With `imagePath`: white = repaint (inpainting).
    public var maskPath: String?
    /// `--mask-blur`: px the paste-back feathers outside the mask (nil: 4, the Python CLI's default).
    public var maskBlur: Int?
    /// `--no-paste-back` sets false: keep the decoded image outside the mask too.
    public var pasteBack: Bool?
    /// A ControlNet shipped in the bundle (`controlnet/<Name>`). As on the Python side, the image or the sketch then
    /// becomes its conditioning image (a sketch's strokes, white on black) and the run starts from noise.
    public var controlNet: String?
    /// `--controlnet-scale` (diffusers' controlnet_conditioning_scale).
    public var controlScale: Double?
    /// `--control-guidance-start` / `--control-guidance-end`: the share of the steps the ControlNet steers.
    public var controlGuidanceStart: Double?
    public var controlGuidanceEnd: Double?
    public var strength: Double?
    public var lowMemory: Bool = PlatformDefaults.lowMemory

    public init(prompt: String) {
        self.prompt = prompt
    }

    public static func == (a: GenerationRequest, b: GenerationRequest) -> Bool {
        a.prompt == b.prompt && a.negativePrompt == b.negativePrompt && a.steps == b.steps && a.guidance == b.guidance
            && a.seed == b.seed && a.scheduler == b.scheduler && a.domain == b.domain && a.unetFunction == b.unetFunction
            && a.computeUnits == b.computeUnits && a.size?.width == b.size?.width && a.size?.height == b.size?.height
            && a.imagePath == b.imagePath && a.sketchPath == b.sketchPath && a.strength == b.strength
            && a.lowMemory == b.lowMemory && a.maskPath == b.maskPath && a.controlNet == b.controlNet
            && a.controlScale == b.controlScale && a.controlGuidanceStart == b.controlGuidanceStart
            && a.controlGuidanceEnd == b.controlGuidanceEnd && a.maskBlur == b.maskBlur && a.pasteBack == b.pasteBack
    }
}

/// A request with every value decided: explicit options first, then the domain preset, then defaults.
public struct ResolvedRequest: Equatable, Sendable {
    public var prompt: String
    public var expandedPrompt: String
    /// nil: no negative prompt (SDXL then guides against zero embeddings, as diffusers and the Python CLI do).
    public var negativePrompt: String?
    public var steps: Int
    public var guidance: Double
    public var seed: UInt32
    public var scheduler: SchedulerKind
    public var domain: String?
    /// The LoRA the domain asks for (file stem) and its scale, reported in `loras`.
    public var lora: DomainPreset.LoRA?
    public var unetFunction: String?
    public var computeUnits: ComputeUnitsChoice
    public var strength: Double?
    public var imagePath: String?
    public var sketchPath: String?
    public var maskPath: String?
    public var maskBlur: Int
    public var pasteBack: Bool
    public var controlNet: String?
    public var controlScale: Double
    public var controlGuidanceStart: Double
    public var controlGuidanceEnd: Double
    public var lowMemory: Bool
    /// Lines to show the user (a LoRA that is not in the bundle, …).
    public var notes: [String]

    public static let defaultSteps = 20
    public static let defaultGuidance = 5.0
    public static let defaultScheduler = SchedulerKind.euler
    /// The Python CLI's values (options.py DEFAULT_STRENGTH and DEFAULT_INPAINT_STRENGTH, inputs.py SKETCH_STRENGTH;
    /// tests/test_swift_parity.py compares them): an image keeps its layout at 0.8, a sketch (a flat filled shape)
    /// at 0.65; inpainting repaints the masked area from pure noise level (1.0), the rest of the image is kept anyway.
    public static let defaultImageStrength = 0.8
    public static let defaultSketchStrength = 0.65
    public static let defaultMaskStrength = 1.0
    /// The Python CLI's bound (python/pocketsd/pipeline/options.py, MAX_CONTROLNET_SCALE).
    public static let maxControlNetScale = 10.0
    /// options.py MASK_BLUR, MAX_MASK_BLUR.
    public static let defaultMaskBlur = 4
    public static let maxMaskBlur = 64
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
        let scheduler = try self.scheduler.map(SchedulerKind.resolve) ?? preset.map { try SchedulerKind.resolve($0.scheduler) }
            ?? ResolvedRequest.defaultScheduler

        if imagePath != nil && sketchPath != nil {
            throw PocketSDError.badInput("give --image or --sketch, not both")
        }
        if maskPath != nil && imagePath == nil {
            throw PocketSDError.badInput("--mask needs --image: the mask says which part of that image to repaint")
        }
        if controlNet != nil && imagePath == nil && sketchPath == nil {
            throw PocketSDError.badInput("--controlnet needs a control image: --sketch FILE (its strokes) or --image FILE")
        }
        if controlNet != nil && maskPath != nil {
            throw PocketSDError.badInput("--mask repaints --image, --controlnet is steered by it: use one or the other")
        }
        // The Python CLI's rules and sentences (python/pocketsd/pipeline/options.py), so both refuse the same flags.
        if maskPath == nil && (maskBlur != nil || pasteBack == false) {
            throw PocketSDError.badInput("--mask-blur and --no-paste-back only apply with --mask")
        }
        if let blur = maskBlur, !(0...ResolvedRequest.maxMaskBlur).contains(blur) {
            throw PocketSDError.badInput("--mask-blur must be a whole number of pixels in 0..\(ResolvedRequest.maxMaskBlur), got \(blur)")
        }
        if controlNet == nil && (controlScale != nil || controlGuidanceStart != nil || controlGuidanceEnd != nil) {
            throw PocketSDError.badInput("--controlnet-scale and --control-guidance-start/end only apply with --controlnet")
        }
        if let scale = controlScale, !(scale.isFinite && (0...ResolvedRequest.maxControlNetScale).contains(scale)) {
            throw PocketSDError.badInput("--controlnet-scale must be between 0 and \(ResolvedRequest.maxControlNetScale), got \(scale)")
        }
        for (flag, value) in [("--control-guidance-start", controlGuidanceStart), ("--control-guidance-end", controlGuidanceEnd)] {
            if let value, !(value.isFinite && (0...1).contains(value)) {
                throw PocketSDError.badInput("\(flag) must be between 0.0 and 1.0, got \(value)")
            }
        }
        let guidanceStart = controlGuidanceStart ?? 0, guidanceEnd = controlGuidanceEnd ?? 1
        if guidanceStart >= guidanceEnd {
            throw PocketSDError.badInput("--control-guidance-start (\(guidanceStart)) must be below --control-guidance-end (\(guidanceEnd))")
        }
        var strength: Double?
        if controlNet != nil {
            if self.strength != nil {
                throw PocketSDError.badInput("--strength does not apply with --controlnet (the image steers the ControlNet, the run starts from noise)")
            }
        } else if imagePath != nil || sketchPath != nil {
            strength = self.strength ?? (maskPath != nil ? ResolvedRequest.defaultMaskStrength
                : sketchPath != nil ? ResolvedRequest.defaultSketchStrength : ResolvedRequest.defaultImageStrength)
        } else if self.strength != nil {
            throw PocketSDError.badInput("--strength needs --image or --sketch")
        }
        if let s = strength, !(s > 0 && s <= 1) {
            throw PocketSDError.badInput("--strength must be in (0, 1], got \(s) (0.3 keeps the image, 1.0 ignores it)")
        }
        if let s = strength, Int(Double(steps) * s) < 1 {
            throw PocketSDError.badInput("--strength \(s) with \(steps) steps leaves no step to run; raise either")
        }

        var notes: [String] = []
        var function = unetFunction
        if let manifest {
            if let size, (size.width, size.height) != (manifest.imageSize.width, manifest.imageSize.height) {
                throw PocketSDError.badInput(
                    "this bundle was converted for \(manifest.imageSize.width)x\(manifest.imageSize.height), not \(size.width)x\(size.height); "
                    + "re-run `pocketsd convert --size \(size.width)x\(size.height)` or drop --size")
            }
            if let function { try manifest.checkFunction(function) }
            if let name = controlNet, !manifest.controlNets.contains(name) {
                throw PocketSDError.badInput(manifest.controlNets.isEmpty
                    ? "this bundle has no ControlNet (\"\(name)\"); convert one into it with `pocketsd convert --controlnet`"
                    : "the bundle has no ControlNet \"\(name)\"; it has: \(manifest.controlNets.joined(separator: ", "))")
            }
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
            // A preset without a negative prompt means "none" (zero embeddings), not an explicit "" (python/…/run.py).
            negativePrompt: negativePrompt ?? preset.flatMap { $0.negativePrompt.isEmpty ? nil : $0.negativePrompt },
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
            maskPath: maskPath,
            maskBlur: maskBlur ?? ResolvedRequest.defaultMaskBlur,
            pasteBack: pasteBack ?? true,
            controlNet: controlNet,
            controlScale: controlScale ?? 1,
            controlGuidanceStart: guidanceStart,
            controlGuidanceEnd: guidanceEnd,
            lowMemory: lowMemory,
            notes: notes)
    }
}
