import Foundation

/// What a `Resources/` folder from `pocketsd convert` holds, read from its file names alone.
///
/// Apple's `StableDiffusion` package loads compiled models (`.mlmodelc`). A bundle converted on Linux holds
/// `.mlpackage` files only, which must be compiled on a Mac first (`xcrun coremlcompiler compile`); this type
/// tells the two apart so the app can say exactly that instead of failing inside Core ML.
public struct BundleLayout: Equatable, Sendable {
    public enum UnetLayout: Equatable, Sendable {
        case single
        case chunked
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

    public let unet: UnetLayout
    public let hasTextEncoder: Bool
    public let hasEncoder: Bool
    public let hasManifest: Bool

    /// Reads the layout from the entries of a folder (file and directory names, no paths).
    /// Throws `PocketSDError.badInput` with the one thing to do when the folder cannot run.
    public init(entries: [String]) throws {
        let names = Set(entries)
        func compiled(_ component: String) -> Bool { names.contains("\(component).mlmodelc") }
        func packaged(_ component: String) -> Bool { names.contains("\(component).mlpackage") }

        let required = [Self.textEncoder2, Self.decoder]
        let unetCandidates = [Self.unet, Self.unetChunk1, Self.unetChunk2]
        let everything = [Self.textEncoder] + required + unetCandidates + [Self.encoder]
        let anyCompiled = everything.contains(where: compiled)
        let uncompiled = everything.filter { packaged($0) && !compiled($0) }

        if !anyCompiled && uncompiled.isEmpty {
            throw PocketSDError.badInput("no Core ML models here (expected TextEncoder, TextEncoder2, Unet, VAEDecoder …); "
                                         + "pass the Resources/ folder written by `pocketsd convert`")
        }
        if !anyCompiled && !uncompiled.isEmpty {
            throw PocketSDError.badInput(
                "the bundle holds only .mlpackage files (\(uncompiled.joined(separator: ", "))); compile them "
                + "on a Mac: `xcrun coremlcompiler compile X.mlpackage Resources/` for each (see swift-app/README.md)")
        }
        for file in [Self.vocab, Self.merges] where !names.contains(file) {
            throw PocketSDError.badInput("the bundle has no \(file); use the Resources/ folder written by `pocketsd convert`")
        }
        for component in required where !compiled(component) {
            throw PocketSDError.badInput(Self.missingMessage(component, packaged: packaged(component)))
        }

        // Apple's loader prefers the two chunks when both exist; do the same so both sides agree.
        if compiled(Self.unetChunk1) && compiled(Self.unetChunk2) {
            unet = .chunked
        } else if compiled(Self.unet) {
            unet = .single
        } else {
            let chunkPackaged = packaged(Self.unetChunk1) || packaged(Self.unetChunk2)
            throw PocketSDError.badInput(Self.missingMessage(
                chunkPackaged ? "UnetChunk1/UnetChunk2" : Self.unet,
                packaged: packaged(Self.unet) || chunkPackaged))
        }
        hasTextEncoder = compiled(Self.textEncoder)
        hasEncoder = compiled(Self.encoder)
        hasManifest = names.contains(Self.manifest)
        if !hasTextEncoder {
            // SDXL base needs both encoders; only the refiner lives with TextEncoder2 alone.
            throw PocketSDError.badInput(Self.missingMessage(Self.textEncoder, packaged: packaged(Self.textEncoder)))
        }
    }

    /// Reads the layout of a folder on disk. Accepts the bundle folder or its `Resources/` child.
    public static func inspect(_ url: URL) throws -> (resources: URL, layout: BundleLayout) {
        let resources = resourcesFolder(url)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resources.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PocketSDError.badInput("no bundle folder at \(url.path); pass the Resources/ folder written by `pocketsd convert`")
        }
        let entries = try FileManager.default.contentsOfDirectory(atPath: resources.path)
        return (resources, try BundleLayout(entries: entries))
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

    public func modelURL(_ component: String, in resources: URL) -> URL {
        resources.appendingPathComponent("\(component).mlmodelc")
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

    private static func missingMessage(_ component: String, packaged: Bool) -> String {
        if packaged {
            return "\(component).mlpackage is not compiled; run `xcrun coremlcompiler compile \(component).mlpackage Resources/` on a Mac"
        }
        return "the bundle has no \(component).mlmodelc; use the Resources/ folder written by `pocketsd convert`"
    }
}
