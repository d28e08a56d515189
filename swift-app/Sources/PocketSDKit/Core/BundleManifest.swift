import Foundation

/// The few facts the app needs from a bundle's `pocketsd.json` (written by `pocketsd convert`).
///
/// The manifest is read as a JSON tree and each fact is looked up under the keys the converter uses, with
/// a fallback when it is missing (older bundles, or bundles made by Apple's own converter, which have no
/// manifest at all). Every fallback is an SDXL default and is listed in `assumptions`, so the app can say
/// which numbers it guessed.
public struct BundleManifest: Sendable {
    /// Whole manifest, for `info` and for fields this type does not name.
    public let raw: JSONValue
    /// Image size the models were converted for, as (height, width) in pixels.
    public let imageSize: (height: Int, width: Int)
    /// VAE latent scaling factor (SDXL: 0.13025; the reference model trains its own).
    public let vaeScalingFactor: Double
    /// Functions of a multifunction UNet (one per LoRA style baked in), empty for a plain UNet.
    public let unetFunctions: [String]
    /// The function loaded when none is asked for.
    public let defaultUnetFunction: String?
    /// Pad token of the second tokenizer (SDXL's is "!", CLIP's and the reference model's "<|endoftext|>").
    public let textEncoder2PadToken: String
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
    /// Facts that fell back to a default because the manifest did not say.
    public let assumptions: [String]
    /// Where the manifest was read from (nil: the bundle has none, SDXL defaults throughout).
    public private(set) var file: URL?

    public static let sdxlScalingFactor = 0.13025
    public static let sdxlPadToken2 = "!"

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
            return sdxlDefaults()
        }
        var manifest = try BundleManifest(data: Data(contentsOf: url))
        manifest.file = url
        return manifest
    }

    init(tree: JSONValue) {
        raw = tree
        var assumed: [String] = []
        let unet = Self.component(tree, named: ["Unet", "UnetChunk1", "unet"])

        if let size = Self.firstIntPair(tree, paths: [["image_size"], ["size"], ["options", "size"]]) {
            // The contract writes sizes as [width, height] (`--size WxH`, report "size").
            imageSize = (height: size.1, width: size.0)
        } else if let h = Self.first(tree, paths: [["height"], ["config", "height"]])?.int,
                  let w = Self.first(tree, paths: [["width"], ["config", "width"]])?.int {
            imageSize = (height: h, width: w)
        } else if let sample = Self.inputShape(unet, named: "sample"), sample.count == 4 {
            imageSize = (height: sample[2] * 8, width: sample[3] * 8)
            assumed.append("image size from the UNet's sample shape × 8")
        } else {
            imageSize = (height: 1024, width: 1024)
            assumed.append("image size 1024×1024 (SDXL)")
        }

        if let factor = Self.first(tree, paths: [["vae_scaling_factor"], ["scaling_factor"], ["vae", "scaling_factor"],
                                                 ["components", "VAEDecoder", "scaling_factor"]])?.double {
            vaeScalingFactor = factor
        } else {
            vaeScalingFactor = Self.sdxlScalingFactor
            assumed.append("VAE scaling factor \(Self.sdxlScalingFactor) (SDXL)")
        }

        let functions = Self.first(tree, paths: [["unet_functions"], ["multifunction", "functions"]])?.stringArray
            ?? unet?["functions"]?.stringArray ?? []
        // One function ("main") is a plain UNet: no function to choose, and no iOS 18 requirement.
        unetFunctions = functions.count > 1 ? functions : []
        defaultUnetFunction = unetFunctions.isEmpty ? nil
            : Self.first(tree, paths: [["default_function"], ["multifunction", "default_function"]])?.string
                ?? unet?["default_function"]?.string ?? functions.first

        if let pad = Self.padToken2(tree) {
            textEncoder2PadToken = pad
        } else {
            textEncoder2PadToken = Self.sdxlPadToken2
            assumed.append("second tokenizer pads with \"!\" (SDXL)")
        }

        unetBatch = Self.inputShape(unet, named: "sample")?.first
            ?? Self.first(tree, paths: [["unet_batch"], ["options", "unet_batch"]])?.int
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

    /// Throws unless Apple's SDXL pipeline can run this bundle: it feeds the UNet a batch of two (classifier-free
    /// guidance in one call) and needs the SDXL inputs (`text_embeds`, `time_ids`).
    public func checkRunnable() throws {
        if let batch = unetBatch, batch != 2 {
            throw PocketSDError.badInput("this bundle's UNet takes batch \(batch) (`--unet-batch-one`); Apple's SDXL pipeline sends batch 2: re-run `pocketsd convert` without --unet-batch-one")
        }
        if let type = raw["model_type"]?.string, type != "sdxl" {
            throw PocketSDError.badInput("this bundle is a \(type) model; the app runs SDXL bundles (two text encoders, text_time conditioning)")
        }
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

    // MARK: lookups

    /// The second tokenizer's pad token: the manifest's `tokenizers` list (tokenizer_config.json entries, as
    /// the Python Core ML backend reads them), else the source model's tokenizer_2 config when that folder is
    /// on this machine, else nil.
    private static func padToken2(_ tree: JSONValue) -> String? {
        func pad(_ config: JSONValue?) -> String? {
            guard let value = config?["pad_token"] else { return nil }
            return value.string ?? value["content"]?.string
        }
        if let explicit = first(tree, paths: [["tokenizer_2_pad_token"]])?.string { return explicit }
        if let list = tree["tokenizers"]?.array, list.count > 1, let token = pad(list[1]) { return token }
        if let source = first(tree, paths: [["source_model", "path"], ["source", "path"]])?.string {
            let url = URL(fileURLWithPath: source).appendingPathComponent("tokenizer_2/tokenizer_config.json")
            if let data = FileManager.default.contents(atPath: url.path), let config = try? JSONValue.parse(data) {
                return pad(config)
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
