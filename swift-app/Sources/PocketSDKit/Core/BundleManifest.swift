import Foundation

/// A model input or output as the manifest lists it: name, fixed shape, element type.
public struct TensorSpec: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var dtype: String

    public init(name: String, shape: [Int], dtype: String = "float32") {
        self.name = name
        self.shape = shape
        self.dtype = dtype
    }

    /// Inputs/outputs in any of the shapes converters write: [{name, shape, dtype}], {name: {shape, dtype}}, {name: shape}.
    static func list(_ raw: JSONValue?) -> [TensorSpec] {
        if let items = raw?.array {
            return items.compactMap { item in
                guard let name = item["name"]?.string else { return nil }
                return TensorSpec(name: name, shape: item["shape"]?.intArray ?? [], dtype: item["dtype"]?.string ?? "float32")
            }
        }
        if let dict = raw?.object {
            return dict.keys.sorted().map { name in
                let entry = dict[name]!
                return TensorSpec(name: name, shape: entry["shape"]?.intArray ?? entry.intArray ?? [],
                                  dtype: entry["dtype"]?.string ?? "float32")
            }
        }
        return []
    }
}

/// One Core ML package of a bundle, as `pocketsd convert` describes it in `components`.
public struct ComponentInfo: Equatable, Sendable {
    public var name: String
    /// Path relative to the bundle folder (format 2), e.g. "Resources/UnetChunk1.mlpackage".
    public var file: String?
    /// "text_encode", "vae_encode", "denoise" or "vae_decode" (format 2).
    public var stage: String?
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    /// Bytes of weights the model holds once loaded (format 2), and of the package on disk.
    public var weightBytes: Int?
    public var bytes: Int?
    public var computePrecision: String?
    public var functions: [String]

    public func input(_ name: String) -> TensorSpec? { inputs.first { $0.name == name } }
}

/// The facts the app needs from a bundle's `pocketsd.json` (written by `pocketsd convert`).
///
/// The manifest is read as a JSON tree and each fact is looked up under the keys the converter uses, with
/// a fallback when it is missing (format 1 bundles, or bundles made by Apple's own converter, which have no
/// manifest at all). Every fallback is listed in `assumptions`, so the app can say which numbers it guessed.
/// Format 2 adds what the app's own loop needs without loading a model: every component's stage, input and
/// output shapes and weight bytes, the memory plan, the scheduler config and the tokenizer settings.
public struct BundleManifest: Sendable {
    /// The newest manifest format this app reads.
    public static let supportedFormatVersion = 2

    /// Whole manifest, for `info` and for fields this type does not name.
    public let raw: JSONValue
    /// nil for a manifest that does not say (and for bundles without one).
    public let formatVersion: Int?
    /// "sdxl" or "sd" (SD 1.x/2.x: one text encoder, no pooled/time conditioning).
    public let family: String
    /// Image size the models were converted for, as (height, width) in pixels.
    public let imageSize: (height: Int, width: Int)
    /// Latent size (height, width): image size / 8 unless the manifest says otherwise.
    public let latentSize: (height: Int, width: Int)
    /// VAE latent scaling factor (SDXL: 0.13025; the reference model trains its own) and shift (none for SD/SDXL).
    public let vaeScalingFactor: Double
    public let vaeShiftFactor: Double?
    /// Functions of a multifunction UNet (one per LoRA style baked in), empty for a plain UNet.
    public let unetFunctions: [String]
    /// The function loaded when none is asked for.
    public let defaultUnetFunction: String?
    /// Pad token of each tokenizer (SDXL's second pads with "!", CLIP's and the reference model's with "<|endoftext|>").
    public let padTokens: [String]
    /// Batch the UNet was converted for (2: classifier-free guidance in one call, Apple's layout).
    public let unetBatch: Int?
    /// Bytes of the UNet on disk (all chunks) and its bits per weight, for the report.
    public let unetBytes: Int?
    public let bitsPerWeight: Double?
    /// Where the bundle came from (model path or hub id) and what made it.
    public let source: String?
    public let pocketsdVersion: String?
    /// Whether the VAE runs in fp32 (the SDXL VAE overflows in fp16): the Neural Engine cannot run fp32, so
    /// the VAE then goes to CPU+GPU as Apple's pipeline does.
    public let vaeIsFloat32: Bool
    /// diffusers' `force_zeros_for_empty_prompt`: no negative prompt → zero embeddings (SDXL base), not "".
    public let forceZerosForEmptyPrompt: Bool
    /// The model's scheduler config (format 2 writes it; else the SD/SDXL training schedule).
    public let schedulerConfig: SchedulerConfig
    /// Why the scheduler config cannot be run, if it cannot (`checkRunnable` throws it).
    public let schedulerProblem: String?
    /// Every component the manifest describes, by name ("TextEncoder", "UnetChunk1", "controlnet/Edges", …).
    public let components: [String: ComponentInfo]
    /// Which stage loads which package, with weight bytes (see `MemoryPlan`).
    public private(set) var memoryPlan: MemoryPlan
    /// ControlNets shipped in the bundle (`controlnet/<Name>` components), by name.
    public let controlNets: [String]
    /// Facts that fell back to a default because the manifest did not say.
    public let assumptions: [String]
    /// Where the manifest was read from (nil: the bundle has none, SDXL defaults throughout).
    public private(set) var file: URL?

    public static let sdxlScalingFactor = 0.13025
    public static let sdxlPadToken2 = "!"

    /// The second tokenizer's pad token (kept under its old name for callers).
    public var textEncoder2PadToken: String { padTokens.count > 1 ? padTokens[1] : Self.sdxlPadToken2 }

    public init(data: Data) throws {
        let tree: JSONValue
        do {
            tree = try JSONValue.parse(data)
        } catch {
            throw PocketSDError.badInput("pocketsd.json is not valid JSON (\(error.localizedDescription)); re-run `pocketsd convert`")
        }
        guard tree.object != nil else {
            throw PocketSDError.badInput("pocketsd.json is not a JSON object; re-run `pocketsd convert`")
        }
        try Self.checkKindAndFormat(tree)
        self.init(tree: tree)
    }

    /// A manifest for a bundle that has none (e.g. made by Apple's converter): SDXL defaults throughout.
    public static func sdxlDefaults() -> BundleManifest {
        BundleManifest(tree: .object([:]))
    }

    /// `pocketsd convert --out DIR` writes DIR/pocketsd.json beside DIR/Resources/; a copy inside Resources/
    /// (how the app ships it, see `make app-resources`) is read too.
    public static func load(resources: URL) throws -> BundleManifest {
        let candidates = [resources.appendingPathComponent(BundleLayout.manifest),
                          resources.deletingLastPathComponent().appendingPathComponent(BundleLayout.manifest)]
        guard let url = candidates.first(where: { FileManager.default.fileExists(atPath: $0.path) }) else {
            var manifest = sdxlDefaults()
            manifest.fillPlanFromDisk(resources: resources)
            return manifest
        }
        var manifest = try BundleManifest(data: Data(contentsOf: url))
        manifest.file = url
        manifest.fillPlanFromDisk(resources: resources)
        return manifest
    }

    /// A format 1 manifest (or none) has no memory plan: take each package's size on disk as its weight bytes.
    mutating func fillPlanFromDisk(resources: URL) {
        guard memoryPlan.source != .manifest else { return }
        var bytes: [String: Int] = [:]
        for name in MemoryPlan.knownPackages {
            for suffix in [".mlmodelc", ".mlpackage"] {
                let url = resources.appendingPathComponent(name + suffix)
                if FileManager.default.fileExists(atPath: url.path) {
                    bytes[name] = BundleLayout.folderBytes(url)
                    break
                }
            }
        }
        if let entries = try? FileManager.default.contentsOfDirectory(atPath: resources.appendingPathComponent("controlnet").path) {
            for entry in entries where entry.hasSuffix(".mlmodelc") || entry.hasSuffix(".mlpackage") {
                let name = "controlnet/" + (entry as NSString).deletingPathExtension
                if bytes[name] == nil {
                    bytes[name] = BundleLayout.folderBytes(resources.appendingPathComponent("controlnet").appendingPathComponent(entry))
                }
            }
        }
        guard !bytes.isEmpty else { return }
        memoryPlan = MemoryPlan.fromSizes(bytes)
    }

    /// A manifest of another kind (a compressed model folder, a diffusers folder) or from a newer PocketSD is refused
    /// in one sentence.
    static func checkKindAndFormat(_ tree: JSONValue) throws {
        if let kind = tree["kind"]?.string, kind != "coreml" {
            throw PocketSDError.badInput(
                "this pocketsd.json describes a \(kind) model, not a Core ML bundle; make one with `pocketsd convert --model FOLDER --out DIR`")
        }
        if let version = tree["format_version"]?.int, version > supportedFormatVersion {
            throw PocketSDError.badInput(
                "this bundle was written by a newer pocketsd (format \(version)); this app reads formats 1–\(supportedFormatVersion): update the app or re-convert with this app's pocketsd")
        }
        if let text = tree["format_version"]?.string, Int(text) == nil {
            throw PocketSDError.badInput("this bundle's pocketsd.json has format_version \"\(text)\", which is not a number; re-run `pocketsd convert`")
        }
    }

    init(tree: JSONValue) {
        raw = tree
        var assumed: [String] = []
        formatVersion = tree["format_version"]?.int
        let parsedComponents = Self.parseComponents(tree)
        components = parsedComponents
        controlNets = parsedComponents.keys.filter { $0.hasPrefix("controlnet/") }.map { String($0.dropFirst("controlnet/".count)) }.sorted()
        let unet = Self.component(tree, named: ["Unet", "UnetChunk1", "unet"])
        let sample = Self.inputShape(unet, named: "sample")

        let declared = (tree["model_type"]?.string ?? tree["family"]?.string)?.lowercased()
        family = declared ?? "sdxl"
        if declared == nil { assumed.append("model type SDXL") }

        if let size = Self.firstIntPair(tree, paths: [["image_size"], ["size"], ["options", "size"]]) {
            // The contract writes sizes as [width, height] (`--size WxH`, report "size").
            imageSize = (height: size.1, width: size.0)
        } else if let h = Self.first(tree, paths: [["height"], ["config", "height"]])?.int,
                  let w = Self.first(tree, paths: [["width"], ["config", "width"]])?.int {
            imageSize = (height: h, width: w)
        } else if let sample, sample.count == 4 {
            imageSize = (height: sample[2] * 8, width: sample[3] * 8)
            assumed.append("image size from the UNet's sample shape × 8")
        } else {
            imageSize = (height: 1024, width: 1024)
            assumed.append("image size 1024×1024 (SDXL)")
        }
        if let latent = Self.firstIntPair(tree, paths: [["latent_size"]]) {
            latentSize = (height: latent.1, width: latent.0)
        } else if let sample, sample.count == 4 {
            latentSize = (height: sample[2], width: sample[3])
        } else {
            latentSize = (height: imageSize.height / 8, width: imageSize.width / 8)
        }

        if let factor = Self.first(tree, paths: [["vae_scaling_factor"], ["scaling_factor"], ["vae", "scaling_factor"],
                                                 ["components", "VAEDecoder", "scaling_factor"]])?.double {
            vaeScalingFactor = factor
        } else {
            vaeScalingFactor = Self.sdxlScalingFactor
            assumed.append("VAE scaling factor \(Self.sdxlScalingFactor) (SDXL)")
        }
        let shift = Self.first(tree, paths: [["vae_shift_factor"], ["vae", "shift_factor"], ["shift_factor"]])?.double
        vaeShiftFactor = (shift ?? 0) == 0 ? nil : shift

        let functions = Self.first(tree, paths: [["unet_functions"], ["multifunction", "functions"]])?.stringArray
            ?? unet.flatMap { Self.functionNames($0["functions"]) } ?? []
        // One function ("main") is a plain UNet: no function to choose, and no iOS 18 requirement.
        unetFunctions = functions.count > 1 ? functions : []
        defaultUnetFunction = unetFunctions.isEmpty ? nil
            : Self.first(tree, paths: [["default_function"], ["multifunction", "default_function"]])?.string
                ?? unet?["default_function"]?.string ?? functions.first

        var pads = ["<|endoftext|>"]
        if let pad2 = Self.padToken2(tree) {
            pads.append(pad2)
        } else {
            pads.append(Self.sdxlPadToken2)
            if family == "sdxl" { assumed.append("second tokenizer pads with \"!\" (SDXL)") }
        }
        if let first = tree["tokenizers"]?.array?.first, let pad = Self.padToken(first) { pads[0] = pad }
        padTokens = pads

        unetBatch = sample?.first ?? Self.first(tree, paths: [["unet_batch"], ["options", "unet_batch"]])?.int
        unetBytes = Self.first(tree, paths: [["unet_bytes"], ["sizes", "unet_bytes"]])?.int
            ?? Self.unetBytesFromComponents(tree)
        bitsPerWeight = Self.first(tree, paths: [["bits_per_weight"], ["compressed_source", "accounting", "bits_per_param"],
                                                 ["accounting", "bits_per_param"], ["accounting", "bits_per_weight"]])?.double
        source = Self.first(tree, paths: [["source_model"], ["source"], ["model"]]).flatMap { $0.string ?? $0["spec"]?.string ?? $0["path"]?.string }
        pocketsdVersion = Self.first(tree, paths: [["pocketsd_version"], ["versions", "pocketsd"]])?.string

        let decoder = Self.component(tree, named: ["VAEDecoder", "vae_decoder"])
        let precision = (Self.first(tree, paths: [["vae_precision", "precision"], ["vae_precision"]])?.string
            ?? decoder?["compute_precision"]?.string ?? decoder?["precision"]?.string)?.lowercased()
        vaeIsFloat32 = precision.map { $0.contains("32") } ?? true
        if precision == nil { assumed.append("VAE in fp32 (runs on CPU+GPU)") }

        if let zeros = tree["force_zeros_for_empty_prompt"]?.bool {
            forceZerosForEmptyPrompt = zeros
        } else {
            forceZerosForEmptyPrompt = family == "sdxl"
            if family == "sdxl" && tree.object?.isEmpty == false { assumed.append("no negative prompt → zero embeddings (SDXL base)") }
        }

        if let configJSON = tree["scheduler_config"], configJSON.object != nil {
            do {
                schedulerConfig = try SchedulerConfig(json: configJSON)
                schedulerProblem = nil
            } catch {
                schedulerConfig = .sdxlDefault
                schedulerProblem = String(describing: error)
            }
        } else {
            schedulerConfig = .sdxlDefault
            schedulerProblem = nil
            assumed.append("scheduler: the SD/SDXL training schedule, \"leading\" spacing, steps_offset 1")
        }

        memoryPlan = MemoryPlan(manifest: tree, components: parsedComponents)
        assumptions = assumed
    }

    /// Picks the UNet function for a LoRA style: the function named after the LoRA file's stem or the domain.
    /// nil when the bundle is not multifunction (the style, if any, was baked in at conversion or is absent).
    public func unetFunction(forDomain preset: DomainPreset?) -> String? {
        guard !unetFunctions.isEmpty else { return nil }
        guard let preset else { return defaultUnetFunction }
        for candidate in [preset.loraFunctionName, preset.name].compactMap({ $0 }) where unetFunctions.contains(candidate) {
            return candidate
        }
        return defaultUnetFunction
    }

    /// Throws unless the app's loop can run this bundle.
    public func checkRunnable() throws {
        if !["sdxl", "sd"].contains(family) {
            throw PocketSDError.badInput("this bundle is a \(family) model; the app runs SDXL and SD 1.x/2.x bundles")
        }
        if let problem = schedulerProblem { throw PocketSDError.badInput(problem) }
    }

    /// Throws unless `name` is one of the UNet's functions (the same wording as the Python backend).
    public func checkFunction(_ name: String) throws {
        if unetFunctions.isEmpty {
            throw PocketSDError.badInput("this bundle's UNet has no functions to select (\"\(name)\"); re-convert with `--lora-functions`")
        }
        if !unetFunctions.contains(name) {
            throw PocketSDError.badInput("the bundle's UNet has no function \"\(name)\"; it has: \(unetFunctions.joined(separator: ", "))")
        }
    }

    /// The components of one stage, in the order the plan lists them.
    public func component(_ name: String) -> ComponentInfo? { components[name] }

    // MARK: lookups

    static func parseComponents(_ tree: JSONValue) -> [String: ComponentInfo] {
        var entries: [(String, JSONValue)] = []
        if let dict = tree["components"]?.object {
            entries = dict.map { ($0.key, $0.value) }
        } else if let list = tree["components"]?.array {
            entries = list.compactMap { item in item["name"]?.string.map { ($0, item) } }
        }
        var out: [String: ComponentInfo] = [:]
        for (name, c) in entries where c.object != nil {
            out[name] = ComponentInfo(
                name: name, file: c["file"]?.string ?? c["path"]?.string, stage: c["stage"]?.string,
                inputs: TensorSpec.list(c["inputs"]), outputs: TensorSpec.list(c["outputs"]),
                weightBytes: c["weight_bytes"]?.int, bytes: c["bytes"]?.int ?? c["size_bytes"]?.int,
                computePrecision: c["compute_precision"]?.string ?? c["precision"]?.string,
                functions: functionNames(c["functions"]) ?? [])
        }
        return out
    }

    /// `functions` as ["main", "poster"] or [{"name": "main", …}].
    static func functionNames(_ raw: JSONValue?) -> [String]? {
        guard let items = raw?.array else { return nil }
        let names = items.compactMap { $0.string ?? $0["name"]?.string }
        return names.count == items.count ? names : nil
    }

    static func padToken(_ config: JSONValue?) -> String? {
        guard let value = config?["pad_token"] else { return nil }
        return value.string ?? value["content"]?.string
    }

    /// The second tokenizer's pad token: the manifest's `tokenizers` list (tokenizer_config.json entries, as
    /// the Python Core ML backend reads them), else the source model's tokenizer_2 config when that folder is
    /// on this machine, else nil.
    private static func padToken2(_ tree: JSONValue) -> String? {
        if let explicit = first(tree, paths: [["tokenizer_2_pad_token"]])?.string { return explicit }
        if let list = tree["tokenizers"]?.array, list.count > 1, let token = padToken(list[1]) { return token }
        if let source = first(tree, paths: [["source_model", "path"], ["source", "path"]])?.string {
            let url = URL(fileURLWithPath: source).appendingPathComponent("tokenizer_2/tokenizer_config.json")
            if let data = FileManager.default.contents(atPath: url.path), let config = try? JSONValue.parse(data) {
                return padToken(config)
            }
        }
        return nil
    }

    private static func first(_ tree: JSONValue, paths: [[String]]) -> JSONValue? {
        for path in paths {
            var node: JSONValue? = tree
            for key in path { node = node?[key] }
            if let node, !node.isNull { return node }
        }
        return nil
    }

    private static func firstIntPair(_ tree: JSONValue, paths: [[String]]) -> (Int, Int)? {
        guard let pair = first(tree, paths: paths)?.intArray, pair.count == 2 else { return nil }
        return (pair[0], pair[1])
    }

    /// `components` may be an object keyed by name or a list of objects with a "name".
    static func component(_ tree: JSONValue, named names: [String]) -> JSONValue? {
        if let dict = tree["components"]?.object {
            for name in names { if let c = dict[name] { return c } }
        }
        if let list = tree["components"]?.array {
            for name in names { if let c = list.first(where: { $0["name"]?.string == name }) { return c } }
        }
        return nil
    }

    /// Inputs may be an object {name: {shape}} / {name: shape} or a list of {name, shape}.
    static func inputShape(_ component: JSONValue?, named name: String) -> [Int]? {
        guard let inputs = component?["inputs"] else { return nil }
        if let entry = inputs[name] {
            return entry["shape"]?.intArray ?? entry.intArray
        }
        return inputs.array?.first(where: { $0["name"]?.string == name })?["shape"]?.intArray
    }

    private static func unetBytesFromComponents(_ tree: JSONValue) -> Int? {
        let parts = ["Unet", "UnetChunk1", "UnetChunk2"].compactMap { component(tree, named: [$0]) }
        let sizes = parts.compactMap { $0["bytes"]?.int ?? $0["size_bytes"]?.int }
        guard !sizes.isEmpty else { return nil }
        // A single Unet and chunks are never both present; if they are, the chunks are what gets loaded.
        let chunks = ["UnetChunk1", "UnetChunk2"].compactMap { component(tree, named: [$0])?["bytes"]?.int }
        return chunks.count == 2 ? chunks.reduce(0, +) : sizes.reduce(0, +)
    }
}
