import Foundation

/// Which package each stage of a generation loads, how many bytes of weights each holds, and what is resident
/// at each stage under the app's two schedules.
///
/// Format 2 manifests carry the plan (`memory_plan`: stages, weight bytes, and the Python side's own resident
/// figures, which `pocketsd info BUNDLE --memory` prints). Older bundles do not: then each package's size on disk
/// stands in for its weight bytes (`source == .diskSizes`, and `info` says so).
///
/// The app's schedules (what `DiffusionLoop` does, and what the tests hold it to):
///   - **low memory**: a stage loads its packages, runs, and unloads them before the next stage loads. The two text
///     encoders are loaded one after the other, never together; the UNet's chunks are loaded one at a time when
///     prewarming (compiling) and together while denoising, with the ControlNet if one is used.
///   - **default**: text encoders, UNet and VAE decoder are loaded before the first run and stay loaded (the VAE
///     encoder and a ControlNet join them the first time a run needs them); every stage holds all of them.
public struct MemoryPlan: Equatable, Sendable {
    public enum Source: String, Sendable {
        case manifest
        case diskSizes = "package sizes on disk"
        case none
    }

    public struct Stage: Equatable, Sendable {
        public var name: String
        public var packages: [String]
        /// "image_input": only when the run starts from an image.
        public var when: String?
    }

    /// What one stage holds resident under a schedule.
    public struct Residency: Equatable, Sendable {
        public var stage: String
        public var packages: [String]
        public var bytes: Int
    }

    public struct Options: Equatable, Sendable {
        public var lowMemory: Bool
        public var imageInput: Bool
        /// A `controlnet/<Name>` component used while denoising.
        public var controlNet: String?

        public init(lowMemory: Bool, imageInput: Bool = false, controlNet: String? = nil) {
            self.lowMemory = lowMemory
            self.imageInput = imageInput
            self.controlNet = controlNet
        }
    }

    public static let stageOrder = ["text_encode", "vae_encode", "denoise", "vae_decode"]
    static let knownPackages = ["TextEncoder", "TextEncoder2", "VAEEncoder", "Unet", "UnetChunk1", "UnetChunk2", "VAEDecoder"]

    public var stages: [Stage]
    public var weightBytes: [String: Int]
    public var source: Source
    /// The manifest's own figures, by mode ("default", "low_memory") then stage; kept to compare with ours.
    public var declaredResident: [String: [String: Int]]
    public var declaredLargest: [String: Int]

    public init(stages: [Stage], weightBytes: [String: Int], source: Source,
                declaredResident: [String: [String: Int]] = [:], declaredLargest: [String: Int] = [:]) {
        self.stages = stages
        self.weightBytes = weightBytes
        self.source = source
        self.declaredResident = declaredResident
        self.declaredLargest = declaredLargest
    }

    /// From a manifest: its `memory_plan`, else the components' own `stage` / `weight_bytes` (format 2), else empty.
    init(manifest tree: JSONValue, components: [String: ComponentInfo]) {
        let plan = tree["memory_plan"]
        var stages: [Stage] = (plan?["stages"]?.array ?? []).compactMap { entry in
            guard let name = entry["stage"]?.string, let packages = entry["packages"]?.stringArray else { return nil }
            return Stage(name: name, packages: packages, when: entry["when"]?.string)
        }
        var bytes: [String: Int] = [:]
        for (name, value) in plan?["weight_bytes"]?.object ?? [:] { if let n = value.int { bytes[name] = n } }
        for (name, component) in components where bytes[name] == nil {
            if let n = component.weightBytes { bytes[name] = n }
        }
        if stages.isEmpty {
            // No plan, but components that name their stage: group them in the usual order (ControlNets apart).
            for stage in Self.stageOrder {
                let names = Self.knownPackages.filter { components[$0]?.stage == stage }
                if !names.isEmpty { stages.append(Stage(name: stage, packages: names, when: stage == "vae_encode" ? "image_input" : nil)) }
            }
        }
        var declared: [String: [String: Int]] = [:]
        for (mode, table) in plan?["resident_bytes"]?.object ?? [:] {
            declared[mode] = (table.object ?? [:]).compactMapValues(\.int)
        }
        self.init(stages: stages, weightBytes: bytes,
                  source: stages.isEmpty || bytes.isEmpty ? .none : .manifest,
                  declaredResident: declared,
                  declaredLargest: (plan?["largest_stage_bytes"]?.object ?? [:]).compactMapValues(\.int))
    }

    /// A plan from package sizes alone (format 1 bundles): the usual stages over the packages present.
    static func fromSizes(_ bytes: [String: Int]) -> MemoryPlan {
        let unet = bytes["UnetChunk1"] != nil && bytes["UnetChunk2"] != nil ? ["UnetChunk1", "UnetChunk2"] : ["Unet"]
        let stages = [
            Stage(name: "text_encode", packages: ["TextEncoder", "TextEncoder2"].filter { bytes[$0] != nil }, when: nil),
            Stage(name: "vae_encode", packages: ["VAEEncoder"].filter { bytes[$0] != nil }, when: "image_input"),
            Stage(name: "denoise", packages: unet.filter { bytes[$0] != nil }, when: nil),
            Stage(name: "vae_decode", packages: ["VAEDecoder"].filter { bytes[$0] != nil }, when: nil),
        ].filter { !$0.packages.isEmpty }
        return MemoryPlan(stages: stages, weightBytes: bytes, source: .diskSizes)
    }

    public func stage(_ name: String) -> Stage? { stages.first { $0.name == name } }

    public func bytes(of packages: [String]) -> Int { packages.compactMap { weightBytes[$0] }.reduce(0, +) }

    /// The stages a run goes through with `options`, each with what is resident during it.
    public func schedule(_ options: Options) -> [Residency] {
        var active = stages.filter { $0.when != "image_input" || options.imageInput }
        if let name = options.controlNet, let index = active.firstIndex(where: { $0.name == "denoise" }) {
            active[index].packages.append("controlnet/" + name)
        }
        if options.lowMemory {
            return active.flatMap { stage -> [Residency] in
                if stage.name == "text_encode" {
                    // one encoder at a time
                    return stage.packages.map { Residency(stage: stage.name, packages: [$0], bytes: bytes(of: [$0])) }
                }
                return [Residency(stage: stage.name, packages: stage.packages, bytes: bytes(of: stage.packages))]
            }
        }
        let all = active.flatMap(\.packages)
        return active.map { Residency(stage: $0.name, packages: all, bytes: bytes(of: all)) }
    }

    /// The stage with the most bytes resident (the run's peak of model weights).
    public func largest(_ options: Options) -> Residency? {
        schedule(options).max { $0.bytes < $1.bytes }
    }

    /// The largest single package: what prewarming (one package at a time) holds at most.
    public var largestPackage: (name: String, bytes: Int)? {
        weightBytes.filter { !$0.key.hasPrefix("controlnet/") }.max { $0.value < $1.value }.map { ($0.key, $0.value) }
    }

    /// Lines for `pocketsd-swift info` and the app: the weights resident at each stage under both schedules, and
    /// whether the manifest's own figures (`pocketsd info BUNDLE --memory`) agree. The manifest counts the VAE
    /// encoder in (its stages include image → image), so it is compared with the image → image schedule.
    public func describe() -> [String] {
        guard source != .none else { return ["memory plan: unknown (no manifest plan and no package sizes)"] }
        var lines = ["memory plan (model weights resident, from \(source == .manifest ? "the manifest" : "package sizes on disk")):"]
        let low = Options(lowMemory: true)
        let rows = schedule(low).map { "\($0.stage) \(Self.megabytes($0.bytes)) [\($0.packages.joined(separator: "+"))]" }
        var lowLine = "  low memory: " + rows.joined(separator: ", ")
        let encoder = stage("vae_encode")?.packages ?? []
        if !encoder.isEmpty { lowLine += "; image → image adds vae_encode \(Self.megabytes(bytes(of: encoder))) [\(encoder.joined(separator: "+"))]" }
        lines.append(lowLine)
        if let peak = largest(low) { lines.append("  low memory peak: \(Self.megabytes(peak.bytes)) at \(peak.stage) [\(peak.packages.joined(separator: "+"))]") }
        if let all = largest(Options(lowMemory: false)) {
            var line = "  default (loaded before the first run, kept): \(Self.megabytes(all.bytes)) [\(all.packages.joined(separator: "+"))]"
            if !encoder.isEmpty, let withImage = largest(Options(lowMemory: false, imageInput: true)) {
                line += "; \(Self.megabytes(withImage.bytes)) once an image → image run added \(encoder.joined(separator: "+"))"
            }
            lines.append(line)
        }
        if !declaredLargest.isEmpty {
            let ours = ["default": largest(Options(lowMemory: false, imageInput: true))?.bytes,
                        "low_memory": largest(Options(lowMemory: true, imageInput: true))?.bytes]
            let differing = declaredLargest.keys.sorted().filter { ours[$0] != nil && ours[$0]! != declaredLargest[$0] }
            if differing.isEmpty {
                lines.append("  (the same peaks as the manifest's own plan)")
            } else {
                lines.append("  the manifest's own plan says " + differing.map { "\($0) \(Self.megabytes(declaredLargest[$0]!))" }.joined(separator: ", ")
                             + "; the app loads as above")
            }
        }
        return lines
    }

    public static func megabytes(_ bytes: Int) -> String {
        bytes >= 1 << 30 ? String(format: "%.2f GB", Double(bytes) / Double(1 << 30)) : String(format: "%.1f MB", Double(bytes) / Double(1 << 20))
    }
}

/// Before loading: does the largest stage fit in the memory the OS will give the app?
///
/// On iOS `os_proc_available_memory()` says how much more the app may allocate before Jetsam ends it. The models'
/// weights are not all a loaded model costs (Core ML adds working buffers and, on the Neural Engine, its own copy),
/// so the check asks for the weights plus `margin`. That factor is an estimate that has not been measured on a
/// device (see swift-app/README.md); the check exists to turn a certain crash into a sentence, not to promise a fit.
public enum MemoryPreflight {
    public static let margin = 0.25

    public enum Verdict: Equatable, Sendable {
        case fits(neededBytes: Int, availableBytes: Int)
        /// The sentence to show instead of loading.
        case tooLarge(message: String)
        /// Nothing to compare (no plan, or the platform does not say what is available).
        case unknown(reason: String)
    }

    public static func needed(_ residency: MemoryPlan.Residency) -> Int {
        Int((Double(residency.bytes) * (1 + margin)).rounded(.up))
    }

    public static func check(_ plan: MemoryPlan, options: MemoryPlan.Options, availableBytes: Int?) -> Verdict {
        guard let available = availableBytes else { return .unknown(reason: "this platform does not report the memory left to the app") }
        guard let peak = plan.largest(options), peak.bytes > 0 else { return .unknown(reason: "the bundle has no memory plan") }
        let need = needed(peak)
        if need <= available { return .fits(neededBytes: need, availableBytes: available) }
        let what = options.lowMemory ? "at its largest stage (\(peak.stage): \(peak.packages.joined(separator: " + "))"
            : "with all its models loaded at once (\(peak.packages.joined(separator: " + "))"
        var message = "This bundle needs about \(MemoryPlan.megabytes(need)) \(what) plus \(Int(margin * 100))% for Core ML's buffers), "
            + "but iOS leaves the app \(MemoryPlan.megabytes(available)) right now"
        var lowMemory = options
        lowMemory.lowMemory = true
        if !options.lowMemory, let low = plan.largest(lowMemory), needed(low) <= available {
            message += "; turn on Low memory (its largest stage needs about \(MemoryPlan.megabytes(needed(low))))."
        } else {
            message += "; close other apps, or convert a smaller bundle (`pocketsd convert --size 768x768 --chunk-unet`)."
        }
        return .tooLarge(message: message)
    }
}
