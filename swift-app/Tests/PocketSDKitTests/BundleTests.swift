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

    func testPackagesAreCompiledOnTheDevice() throws {
        // What `pocketsd convert` writes on Linux: packages only. The app compiles them (MLModel.compileModel).
        let packages = ["TextEncoder.mlpackage", "TextEncoder2.mlpackage", "UnetChunk1.mlpackage", "UnetChunk2.mlpackage",
                        "VAEDecoder.mlpackage", "VAEEncoder.mlmodelc", "vocab.json", "merges.txt", "pocketsd.json"]
        let layout = try BundleLayout(entries: packages, controlNetEntries: ["Edges.mlpackage", "Depth.mlmodelc"])
        XCTAssertEqual(layout.unet, .chunked)
        XCTAssertEqual(layout.needsCompile, ["TextEncoder", "TextEncoder2", "UnetChunk1", "UnetChunk2", "VAEDecoder", "controlnet/Edges"])
        XCTAssertEqual(layout.controlNets, ["Edges": .package, "Depth": .compiled])
        let resources = URL(fileURLWithPath: "/b/Resources")
        XCTAssertEqual(layout.modelURL("UnetChunk1", in: resources).lastPathComponent, "UnetChunk1.mlpackage")
        XCTAssertEqual(layout.modelURL("VAEEncoder", in: resources).lastPathComponent, "VAEEncoder.mlmodelc")
        XCTAssertEqual(layout.modelURL("controlnet/Depth", in: resources).path, "/b/Resources/controlnet/Depth.mlmodelc")
        // compiled wins when both are there
        let both = try BundleLayout(entries: base + ["Unet.mlmodelc", "Unet.mlpackage"])
        XCTAssertEqual(both.needsCompile, [])
    }

    func testICloudPlaceholdersAreListedNotRefused() throws {
        let entries = ["TextEncoder.mlmodelc", ".TextEncoder2.mlpackage.icloud", "VAEDecoder.mlmodelc", "Unet.mlmodelc",
                       "vocab.json", ".merges.txt.icloud"]
        let layout = try BundleLayout(entries: entries)
        XCTAssertEqual(layout.notDownloaded, ["TextEncoder2.mlpackage", "merges.txt"])
        XCTAssertTrue(layout.hasTextEncoder2)
        XCTAssertEqual(ICloudFiles.realName(ofPlaceholder: ".weight.bin.icloud"), "weight.bin")
        XCTAssertNil(ICloudFiles.realName(ofPlaceholder: "weight.bin"))
        XCTAssertNil(ICloudFiles.realName(ofPlaceholder: ".icloud"))
    }

    func testMissingPiecesAreNamed() {
        XCTAssertThrowsError(try BundleLayout(entries: base)) { error in
            XCTAssertTrue(String(describing: error).contains("no Unet (.mlmodelc or .mlpackage)"), "\(error)")
        }
        XCTAssertThrowsError(try BundleLayout(entries: base.filter { $0 != "merges.txt" } + ["Unet.mlmodelc"])) { error in
            XCTAssertTrue(String(describing: error).contains("merges.txt"), "\(error)")
        }
        XCTAssertThrowsError(try BundleLayout(entries: base + ["UnetChunk1.mlmodelc"])) { error in
            XCTAssertTrue(String(describing: error).contains("only one of UnetChunk1/UnetChunk2"), "\(error)")
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
        XCTAssertTrue(description.contains("ready to run: yes (single UNet"), description)
        XCTAssertTrue(description.contains("memory plan (model weights resident, from package sizes on disk)"), description)
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
        // Format 1 carries no scheduler config and no force_zeros flag: those two are the only guesses.
        XCTAssertEqual(m.assumptions.count, 2, "\(m.assumptions)")
        XCTAssertTrue(m.assumptions.allSatisfy { $0.contains("scheduler") || $0.contains("zero embeddings") }, "\(m.assumptions)")
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

    func testBatchOneAndSDBundlesRunOtherFamiliesAreRefused() throws {
        // The app's own loop feeds any batch (two UNet calls per step for a batch-one UNet) and runs SD 1.x/2.x.
        let batchOne = #"{"model_type": "sdxl", "components": {"Unet": {"inputs": [{"name": "sample", "shape": [1, 4, 16, 16]}]}}}"#
        let manifest = try BundleManifest(data: Data(batchOne.utf8))
        XCTAssertEqual(manifest.unetBatch, 1)
        XCTAssertNoThrow(try manifest.checkRunnable())
        XCTAssertNoThrow(try BundleManifest(data: Data(#"{"model_type": "sd"}"#.utf8)).checkRunnable())
        XCTAssertThrowsError(try BundleManifest(data: Data(#"{"model_type": "flux"}"#.utf8)).checkRunnable()) { error in
            XCTAssertTrue(String(describing: error).contains("SDXL and SD 1.x/2.x"), "\(error)")
        }
    }

    func testWrongKindOrNewerFormatIsOneSentence() {
        for (json, fragment) in [(#"{"kind": "compressed", "format_version": 1}"#, "not a Core ML bundle"),
                                 (#"{"kind": "coreml", "format_version": 3}"#, "newer pocketsd (format 3)"),
                                 (#"{"kind": "coreml", "format_version": "two"}"#, "not a number")] {
            XCTAssertThrowsError(try BundleManifest(data: Data(json.utf8)), json) { error in
                let text = String(describing: error)
                XCTAssertTrue(text.contains(fragment), text)
                XCTAssertFalse(text.contains("\n"))
                XCTAssertEqual((error as? PocketSDError)?.exitCode, 2)
            }
        }
        XCTAssertNoThrow(try BundleManifest(data: Data(#"{"kind": "coreml", "format_version": 2}"#.utf8)))
    }

    func testUnsupportedSchedulerConfigIsRefusedAtRunTimeNotAtInfo() throws {
        let json = #"{"scheduler_config": {"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}}"#
        let manifest = try BundleManifest(data: Data(json.utf8))
        XCTAssertThrowsError(try manifest.checkRunnable()) { error in
            XCTAssertTrue(String(describing: error).contains("use_karras_sigmas"), "\(error)")
        }
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
        XCTAssertTrue(text.contains("ready to run"), text)
    }
}
