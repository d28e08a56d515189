import XCTest
@testable import PocketSDKit

final class BundleLayoutTests: XCTestCase {
    let base = ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "VAEDecoder.mlmodelc", "vocab.json", "merges.txt"]

    func testSingleUnet() throws {
        let layout = try BundleLayout(entries: base + ["Unet.mlmodelc", "VAEEncoder.mlmodelc", "pocketsd.json"])
        XCTAssertEqual(layout.unet, .single)
        XCTAssertEqual(layout.unetComponents, ["Unet"])
        XCTAssertTrue(layout.hasEncoder)
        XCTAssertTrue(layout.hasManifest)
    }

    func testChunksWinOverASingleUnetAsInApplesLoader() throws {
        let layout = try BundleLayout(entries: base + ["Unet.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc"])
        XCTAssertEqual(layout.unet, .chunked)
        XCTAssertEqual(layout.unetComponents, ["UnetChunk1", "UnetChunk2"])
        XCTAssertFalse(layout.hasEncoder)
    }

    func testABundleFromLinuxSaysToCompileOnAMac() {
        let packages = ["TextEncoder.mlpackage", "TextEncoder2.mlpackage", "Unet.mlpackage", "VAEDecoder.mlpackage",
                        "vocab.json", "merges.txt", "pocketsd.json"]
        XCTAssertThrowsError(try BundleLayout(entries: packages)) { error in
            let message = String(describing: error)
            XCTAssertTrue(message.contains("xcrun coremlcompiler compile"), message)
        }
    }

    func testMissingPiecesAreNamed() {
        XCTAssertThrowsError(try BundleLayout(entries: base)) { error in
            XCTAssertTrue(String(describing: error).contains("Unet.mlmodelc"), "\(error)")
        }
        XCTAssertThrowsError(try BundleLayout(entries: base.filter { $0 != "merges.txt" } + ["Unet.mlmodelc"])) { error in
            XCTAssertTrue(String(describing: error).contains("merges.txt"), "\(error)")
        }
        XCTAssertThrowsError(try BundleLayout(entries: base + ["UnetChunk1.mlmodelc", "UnetChunk2.mlpackage"])) { error in
            XCTAssertTrue(String(describing: error).contains("not compiled"), "\(error)")
        }
        XCTAssertThrowsError(try BundleLayout(entries: ["notes.txt"])) { error in
            XCTAssertTrue(String(describing: error).contains("no Core ML models"), "\(error)")
        }
    }

    func testInspectAcceptsTheBundleFolderOrItsResources() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-layout-\(UUID().uuidString)")
        let resources = root.appendingPathComponent("Resources")
        defer { try? FileManager.default.removeItem(at: root) }
        for entry in base + ["Unet.mlmodelc"] {
            let url = resources.appendingPathComponent(entry)
            if entry.hasSuffix(".mlmodelc") {
                try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
                try Data(count: 100).write(to: url.appendingPathComponent("weight.bin"))
            } else {
                try FileManager.default.createDirectory(at: resources, withIntermediateDirectories: true)
                try Data("{}".utf8).write(to: url)
            }
        }
        XCTAssertEqual(try BundleLayout.inspect(root).resources.standardizedFileURL.path, resources.standardizedFileURL.path)
        XCTAssertEqual(try BundleLayout.inspect(resources).layout.unet, .single)
        XCTAssertEqual(BundleLayout.folderBytes(resources.appendingPathComponent("Unet.mlmodelc")), 100)
        XCTAssertThrowsError(try BundleLayout.inspect(root.appendingPathComponent("missing")))
        // No manifest: SDXL defaults, each listed as an assumption.
        let manifest = try BundleManifest.load(resources: resources)
        XCTAssertEqual(manifest.vaeScalingFactor, BundleManifest.sdxlScalingFactor)
        XCTAssertFalse(manifest.assumptions.isEmpty)
        let description = try TextSummaries.describeBundle(at: root)
        XCTAssertTrue(description.contains("ready for Apple's StableDiffusionXLPipeline: yes (single UNet"), description)
        XCTAssertTrue(description.contains("no pocketsd.json"), description)
    }
}

final class BundleManifestTests: XCTestCase {
    /// A manifest in the shape `pocketsd convert` writes (python/pocketsd/convert/run.py): components keyed by
    /// name with lists of input records, `image_size` as [width, height], `vae_precision` as an object.
    let converterStyle = """
    {
      "kind": "coreml", "format_version": 1, "pocketsd_version": "0.1.0", "model_type": "sdxl",
      "source_model": {"spec": "reference", "path": "/nowhere/weights", "kind": "compressed"},
      "options": {"unet_batch": 2},
      "image_size": [192, 128], "latent_size": [24, 16], "vae_scaling_factor": 3.79,
      "vae_precision": {"precision": "float32", "reason": "overflows in fp16"},
      "tokenizers": [{"pad_token": "<|endoftext|>"}, {"pad_token": {"content": "!"}}],
      "compressed_source": {"recipe": {"name": "w4r32"}, "accounting": {"bits_per_param": 4.61}},
      "components": {
        "Unet": {"file": "Resources/Unet.mlpackage", "bytes": 1000, "compute_precision": "float16",
                 "inputs": [{"name": "sample", "shape": [2, 4, 16, 24], "dtype": "float32"},
                            {"name": "timestep", "shape": [2], "dtype": "float32"}],
                 "functions": ["main", "poster", "my_style"]},
        "VAEDecoder": {"bytes": 10, "compute_precision": "float32"}
      }
    }
    """

    func testConverterStyleManifest() throws {
        let m = try BundleManifest(data: Data(converterStyle.utf8))
        XCTAssertEqual(m.imageSize.width, 192)
        XCTAssertEqual(m.imageSize.height, 128)
        XCTAssertEqual(m.vaeScalingFactor, 3.79)
        XCTAssertEqual(m.textEncoder2PadToken, "!")
        XCTAssertEqual(m.unetFunctions, ["main", "poster", "my_style"])
        XCTAssertEqual(m.defaultUnetFunction, "main")
        XCTAssertEqual(m.unetBatch, 2)
        XCTAssertEqual(m.unetBytes, 1000)
        XCTAssertEqual(m.bitsPerWeight, 4.61)
        XCTAssertEqual(m.source, "reference")
        XCTAssertTrue(m.vaeIsFloat32)
        XCTAssertEqual(m.assumptions, [])
        XCTAssertNoThrow(try m.checkRunnable())
        // A LoRA file name with a dash maps to the converter's sanitized function name.
        let preset = DomainPreset(name: "mine", description: "", promptTemplate: "{prompt}", negativePrompt: "", steps: 1,
                                  guidance: 1, scheduler: "euler", lora: .init(file: "my-style.safetensors", scale: 1))
        XCTAssertEqual(preset.loraFunctionName, "my_style")
        XCTAssertEqual(m.unetFunction(forDomain: preset), "my_style")
    }

    func testASingleFunctionIsAPlainUnet() throws {
        let json = #"{"components": {"Unet": {"functions": ["main"]}}}"#
        let m = try BundleManifest(data: Data(json.utf8))
        XCTAssertEqual(m.unetFunctions, [])
        XCTAssertNil(m.defaultUnetFunction)
        XCTAssertThrowsError(try m.checkFunction("main"))
    }

    func testBatchOneAndNonXLBundlesAreRefused() throws {
        let batchOne = #"{"model_type": "sdxl", "components": {"Unet": {"inputs": [{"name": "sample", "shape": [1, 4, 16, 16]}]}}}"#
        XCTAssertThrowsError(try BundleManifest(data: Data(batchOne.utf8)).checkRunnable()) { error in
            XCTAssertTrue(String(describing: error).contains("--unet-batch-one"), "\(error)")
        }
        XCTAssertThrowsError(try BundleManifest(data: Data(#"{"model_type": "sd"}"#.utf8)).checkRunnable())
    }

    func testManifestBesideResourcesIsFound() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-manifest-\(UUID().uuidString)")
        let resources = root.appendingPathComponent("Resources")
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.createDirectory(at: resources, withIntermediateDirectories: true)
        try Data(converterStyle.utf8).write(to: root.appendingPathComponent("pocketsd.json"))
        let m = try BundleManifest.load(resources: resources)
        XCTAssertEqual(m.file?.lastPathComponent, "pocketsd.json")
        XCTAssertEqual(m.vaeScalingFactor, 3.79)
    }

    func testListStyleComponentsAndSizeFromTheUnet() throws {
        let json = """
        {"components": [{"name": "UnetChunk1", "bytes": 600, "inputs": [{"name": "sample", "shape": [2, 4, 96, 64]}]},
                        {"name": "UnetChunk2", "bytes": 400},
                        {"name": "VAEDecoder", "precision": "fp16"}]}
        """
        let m = try BundleManifest(data: Data(json.utf8))
        XCTAssertEqual(m.imageSize.height, 768)
        XCTAssertEqual(m.imageSize.width, 512)
        XCTAssertEqual(m.unetBytes, 1000)
        XCTAssertFalse(m.vaeIsFloat32)
        XCTAssertEqual(m.textEncoder2PadToken, BundleManifest.sdxlPadToken2)
        XCTAssertTrue(m.unetFunctions.isEmpty)
        XCTAssertNil(m.unetFunction(forDomain: nil))
        XCTAssertTrue(m.assumptions.contains { $0.contains("sample shape") }, "\(m.assumptions)")
    }

    func testNotJSONIsBadInput() {
        XCTAssertThrowsError(try BundleManifest(data: Data("{not json".utf8))) { error in
            XCTAssertTrue(String(describing: error).contains("pocketsd.json"), "\(error)")
        }
        XCTAssertThrowsError(try BundleManifest(data: Data("[]".utf8)))
    }

    /// If a bundle made by `pocketsd convert` is around (`make convert` → build/coreml, or $POCKETSD_BUNDLE),
    /// its manifest must give the facts the app cannot guess well (size, VAE scaling factor and precision)
    /// and say whether Apple's pipeline can run it.
    func testARealConvertedBundleIfPresent() throws {
        var roots = [DomainPresetsTests.repoRoot.appendingPathComponent("build/coreml")]
        if let env = ProcessInfo.processInfo.environment["POCKETSD_BUNDLE"] { roots.insert(URL(fileURLWithPath: env), at: 0) }
        guard let root = roots.first(where: { FileManager.default.fileExists(atPath: $0.appendingPathComponent("pocketsd.json").path) }) else {
            throw XCTSkip("no converted bundle (run `make convert` at the repository root, or set POCKETSD_BUNDLE)")
        }
        let m = try BundleManifest.load(resources: root.appendingPathComponent("Resources"))
        XCTAssertNotNil(m.file)
        for fact in ["scaling factor", "image size", "VAE in fp32"] {
            XCTAssertFalse(m.assumptions.contains { $0.contains(fact) }, "\(fact) guessed: \(m.assumptions)")
        }
        XCTAssertNoThrow(try m.checkRunnable())
        let text = try TextSummaries.describeBundle(at: root)
        XCTAssertTrue(text.contains("ready for Apple's StableDiffusionXLPipeline"), text)
    }
}
