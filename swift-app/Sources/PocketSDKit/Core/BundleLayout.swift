import Foundation

/// What a `Resources/` folder from `pocketsd convert` holds, read from its file names alone.
///
/// A component may be there compiled (`.mlmodelc`, what `pocketsd convert` writes on a Mac) or as a package
/// (`.mlpackage`, what it writes on Linux); the app compiles packages on the device (`MLModel.compileModel`,
/// see Engine/ModelCompiler.swift), so both load. A file that iCloud Drive has not downloaded yet shows as a
/// placeholder (`.Name.icloud`) and is listed in `notDownloaded`.
public struct BundleLayout: Equatable, Sendable {
    public enum UnetLayout: Equatable, Sendable {
        case single
        case chunked
    }

    public enum Form: Equatable, Sendable {
        case compiled
        case package
    }

    /// Component names as Apple's package spells them (`StableDiffusionXLPipeline.ResourceURLs`).
    public static let textEncoder = "TextEncoder"
    public static let textEncoder2 = "TextEncoder2"
    public static let unet = "Unet"
    public static let unetChunk1 = "UnetChunk1"
    public static let unetChunk2 = "UnetChunk2"
    public static let decoder = "VAEDecoder"
    public static let encoder = "VAEEncoder"
    public static let vocab = "vocab.json"
    public static let merges = "merges.txt"
    public static let manifest = "pocketsd.json"
    public static let controlNetFolder = "controlnet"

    public let unet: UnetLayout
    /// How each component present is stored (compiled wins when both are there).
    public let forms: [String: Form]
    /// ControlNets in `Resources/controlnet/`, by name.
    public let controlNets: [String: Form]
    public let hasTextEncoder2: Bool
    public let hasEncoder: Bool
    public let hasManifest: Bool
    /// Entries iCloud has not downloaded yet (their real names).
    public let notDownloaded: [String]

    /// Reads the layout from the entries of a folder (file and directory names, no paths) and of its
    /// `controlnet/` folder. Throws `PocketSDError.badInput` with the one thing to do when the folder cannot run.
    public init(entries: [String], controlNetEntries: [String] = []) throws {
        var names = Set<String>()
        var pending: [String] = []
        for entry in entries {
            if let real = ICloudFiles.realName(ofPlaceholder: entry) {
                names.insert(real)
                pending.append(real)
            } else {
                names.insert(entry)
            }
        }
        func form(_ component: String, in set: Set<String>) -> Form? {
            if set.contains("\(component).mlmodelc") { return .compiled }
            if set.contains("\(component).mlpackage") { return .package }
            return nil
        }
        let everything = [Self.textEncoder, Self.textEncoder2, Self.unet, Self.unetChunk1, Self.unetChunk2, Self.decoder, Self.encoder]
        var forms: [String: Form] = [:]
        for component in everything { forms[component] = form(component, in: names) }

        if forms.isEmpty {
            throw PocketSDError.badInput("no Core ML models here (expected TextEncoder, TextEncoder2, Unet, VAEDecoder …); "
                                         + "pass the Resources/ folder written by `pocketsd convert`")
        }
        for file in [Self.vocab, Self.merges] where !names.contains(file) {
            throw PocketSDError.badInput("the bundle has no \(file); use the Resources/ folder written by `pocketsd convert`")
        }
        for component in [Self.textEncoder, Self.decoder] where forms[component] == nil {
            throw PocketSDError.badInput(Self.missingMessage(component))
        }
        // Apple's loader prefers the two chunks when both exist; do the same so both sides agree.
        if forms[Self.unetChunk1] != nil && forms[Self.unetChunk2] != nil {
            unet = .chunked
            forms[Self.unet] = nil
        } else if forms[Self.unet] != nil {
            unet = .single
            forms[Self.unetChunk1] = nil
            forms[Self.unetChunk2] = nil
        } else {
            let oneChunk = forms[Self.unetChunk1] != nil || forms[Self.unetChunk2] != nil
            throw PocketSDError.badInput(oneChunk
                ? "the bundle has only one of UnetChunk1/UnetChunk2; copy the whole Resources/ folder written by `pocketsd convert --chunk-unet`"
                : Self.missingMessage(Self.unet))
        }
        var nets: [String: Form] = [:]
        var netNames = Set<String>()
        for entry in controlNetEntries {
            if let real = ICloudFiles.realName(ofPlaceholder: entry) {
                netNames.insert(real)
                pending.append("\(Self.controlNetFolder)/\(real)")
            } else {
                netNames.insert(entry)
            }
        }
        for entry in netNames where entry.hasSuffix(".mlmodelc") || entry.hasSuffix(".mlpackage") {
            let name = (entry as NSString).deletingPathExtension
            if let f = form(name, in: netNames) { nets[name] = f }
        }
        self.forms = forms
        controlNets = nets
        hasTextEncoder2 = forms[Self.textEncoder2] != nil
        hasEncoder = forms[Self.encoder] != nil
        hasManifest = names.contains(Self.manifest)
        notDownloaded = pending.sorted()
    }

    /// Reads the layout of a folder on disk. Accepts the bundle folder or its `Resources/` child.
    public static func inspect(_ url: URL) throws -> (resources: URL, layout: BundleLayout) {
        let resources = resourcesFolder(url)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resources.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PocketSDError.badInput("no bundle folder at \(url.path); pass the Resources/ folder written by `pocketsd convert`")
        }
        let entries = try FileManager.default.contentsOfDirectory(atPath: resources.path)
        let nets = (try? FileManager.default.contentsOfDirectory(atPath: resources.appendingPathComponent(controlNetFolder).path)) ?? []
        return (resources, try BundleLayout(entries: entries, controlNetEntries: nets))
    }

    /// `pocketsd convert --out DIR` writes `DIR/Resources/`; users may pass either.
    public static func resourcesFolder(_ url: URL) -> URL {
        let child = url.appendingPathComponent("Resources")
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: child.path, isDirectory: &isDirectory), isDirectory.boolValue {
            return child
        }
        return url
    }

    /// Where a component sits in the bundle: the compiled model when there is one, else the package.
    /// A ControlNet is named "controlnet/<Name>".
    public func modelURL(_ component: String, in resources: URL) -> URL {
        let form = component.hasPrefix(Self.controlNetFolder + "/")
            ? controlNets[String(component.dropFirst(Self.controlNetFolder.count + 1))]
            : forms[component]
        return resources.appendingPathComponent(component + (form == .package ? ".mlpackage" : ".mlmodelc"))
    }

    /// Components stored as `.mlpackage` only: the app compiles these on the device before loading them.
    public var needsCompile: [String] {
        forms.filter { $0.value == .package }.map(\.key).sorted()
            + controlNets.filter { $0.value == .package }.map { "\(Self.controlNetFolder)/\($0.key)" }.sorted()
    }

    /// Bytes of a file or of every file under a folder (a compiled model is a folder).
    public static func folderBytes(_ url: URL) -> Int {
        let keys: [URLResourceKey] = [.fileSizeKey, .isRegularFileKey]
        if let values = try? url.resourceValues(forKeys: Set(keys)), values.isRegularFile == true {
            return values.fileSize ?? 0
        }
        guard let walker = FileManager.default.enumerator(at: url, includingPropertiesForKeys: keys) else { return 0 }
        var total = 0
        for case let file as URL in walker {
            if let values = try? file.resourceValues(forKeys: Set(keys)), values.isRegularFile == true {
                total += values.fileSize ?? 0
            }
        }
        return total
    }

    public var unetComponents: [String] {
        switch unet {
        case .single: return [Self.unet]
        case .chunked: return [Self.unetChunk1, Self.unetChunk2]
        }
    }

    public var textEncoders: [String] { hasTextEncoder2 ? [Self.textEncoder, Self.textEncoder2] : [Self.textEncoder] }

    private static func missingMessage(_ component: String) -> String {
        "the bundle has no \(component) (.mlmodelc or .mlpackage); use the Resources/ folder written by `pocketsd convert`"
    }
}
