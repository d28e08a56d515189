import XCTest
@testable import PocketSDKit

/// A format 2 manifest as the issue specifies what `pocketsd convert` writes: the loop's shapes, the memory plan and
/// the pre-flight check come from it without loading a model.
final class ManifestV2Tests: XCTestCase {
    static let mb = 1 << 20

    static let json = """
    { "kind": "coreml", "format_version": 2, "pocketsd_version": "0.2.0",
      "model_type": "sdxl", "image_size": [768, 768], "latent_size": [96, 96], "vae_scaling_factor": 0.13025,
      "scheduler_config": {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                           "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
                           "steps_offset": 1, "timestep_spacing": "leading", "final_sigmas_type": "zero"},
      "force_zeros_for_empty_prompt": true,
      "tokenizers": [{"pad_token": "<|endoftext|>", "model_max_length": 77}, {"pad_token": "!", "model_max_length": 77}],
      "options": {"target": "iOS18", "attention": "split-einsum", "chunk_unet": true, "unet_batch": 2},
      "components": {
        "TextEncoder": {"file": "Resources/TextEncoder.mlpackage", "stage": "text_encode",
                        "inputs": [{"name": "input_ids", "shape": [1, 77], "dtype": "float32"}],
                        "outputs": [{"name": "hidden_embeds", "shape": [1, 77, 768], "dtype": "float32"},
                                    {"name": "pooled_outputs", "shape": [1, 768], "dtype": "float32"}],
                        "weight_bytes": 246000000, "bytes": 246100000,
                        "sha256": {"Resources/TextEncoder.mlpackage": "0123456789abcdef0123456789abcdef"}, "compute_precision": "float16"},
        "TextEncoder2": {"file": "Resources/TextEncoder2.mlpackage", "stage": "text_encode", "weight_bytes": 1390000000},
        "UnetChunk1": {"file": "Resources/UnetChunk1.mlpackage", "stage": "denoise", "functions": ["main", "poster"],
                       "inputs": [{"name": "sample", "shape": [2, 4, 96, 96]}, {"name": "timestep", "shape": [2]},
                                  {"name": "encoder_hidden_states", "shape": [2, 2048, 1, 77]},
                                  {"name": "text_embeds", "shape": [2, 1280]}, {"name": "time_ids", "shape": [2, 6]}],
                       "weight_bytes": 760000000},
        "UnetChunk2": {"file": "Resources/UnetChunk2.mlpackage", "stage": "denoise", "functions": ["main", "poster"], "weight_bytes": 700000000},
        "VAEDecoder": {"file": "Resources/VAEDecoder.mlpackage", "stage": "vae_decode", "compute_precision": "float16",
                       "inputs": [{"name": "z", "shape": [1, 4, 96, 96]}], "weight_bytes": 98000000},
        "VAEEncoder": {"file": "Resources/VAEEncoder.mlpackage", "stage": "vae_encode",
                       "inputs": [{"name": "x", "shape": [1, 3, 768, 768]}], "weight_bytes": 68000000},
        "controlnet/Edges": {"file": "Resources/controlnet/Edges.mlpackage", "stage": "denoise", "weight_bytes": 500000000}
      },
      "memory_plan": {
        "stages": [{"stage": "text_encode", "packages": ["TextEncoder", "TextEncoder2"]},
                   {"stage": "vae_encode", "packages": ["VAEEncoder"], "when": "image_input"},
                   {"stage": "denoise", "packages": ["UnetChunk1", "UnetChunk2"]},
                   {"stage": "vae_decode", "packages": ["VAEDecoder"]}],
        "weight_bytes": {"TextEncoder": 246000000, "TextEncoder2": 1390000000, "UnetChunk1": 760000000, "UnetChunk2": 700000000,
                         "VAEDecoder": 98000000, "VAEEncoder": 68000000},
        "resident_bytes": {"default": {"text_encode": 1636000000, "vae_encode": 1704000000, "denoise": 3164000000, "vae_decode": 3262000000},
                           "low_memory": {"text_encode": 1390000000, "vae_encode": 68000000, "denoise": 1460000000, "vae_decode": 98000000}},
        "largest_stage_bytes": {"default": 3262000000, "low_memory": 1460000000}
      } }
    """

    func manifest() throws -> BundleManifest { try BundleManifest(data: Data(Self.json.utf8)) }

    func testEveryFactComesFromTheManifest() throws {
        let m = try manifest()
        XCTAssertEqual(m.formatVersion, 2)
        XCTAssertEqual(m.assumptions, [], "nothing guessed for a format 2 manifest")
        XCTAssertEqual(m.imageSize.width, 768)
        XCTAssertEqual(m.latentSize.height, 96)
        XCTAssertEqual(m.padTokens, ["<|endoftext|>", "!"])
        XCTAssertEqual(m.schedulerConfig.timestepSpacing, "leading")
        XCTAssertTrue(m.forceZerosForEmptyPrompt)
        XCTAssertFalse(m.vaeIsFloat32, "an fp16-safe VAE can stay on the Neural Engine")
        XCTAssertEqual(m.unetFunctions, ["main", "poster"])
        XCTAssertEqual(m.controlNets, ["Edges"])
        XCTAssertEqual(m.component("UnetChunk1")?.input("time_ids")?.shape, [2, 6])
        XCTAssertNoThrow(try m.checkRunnable())

        let geometry = LoopGeometry(manifest: m, unetComponents: ["UnetChunk1", "UnetChunk2"])
        XCTAssertEqual(geometry.latentShape, [1, 4, 96, 96])
        XCTAssertTrue(geometry.hiddenStatesChannelsFirst)
        XCTAssertEqual(geometry.decoderInput, "z")
        XCTAssertEqual(geometry.encoderInput, "x")
        XCTAssertEqual(geometry.assumptions, [])
    }

    func testTheMemoryPlanAgreesWithTheManifestsOwnFigures() throws {
        let plan = try manifest().memoryPlan
        XCTAssertEqual(plan.source, .manifest)
        let low = try XCTUnwrap(plan.largest(.init(lowMemory: true)))
        XCTAssertEqual(low.stage, "denoise")
        XCTAssertEqual(low.bytes, 1_460_000_000)
        XCTAssertEqual(low.bytes, plan.declaredLargest["low_memory"])
        // Low memory: the two text encoders take turns, so text_encode holds the larger one only.
        let textRows = plan.schedule(.init(lowMemory: true)).filter { $0.stage == "text_encode" }
        XCTAssertEqual(textRows.map(\.packages), [["TextEncoder"], ["TextEncoder2"]])
        XCTAssertEqual(textRows.map(\.bytes).max(), plan.declaredResident["low_memory"]?["text_encode"])
        // Default: everything loaded; the manifest counts the VAE encoder in (the Python side's stages include it).
        XCTAssertEqual(plan.largest(.init(lowMemory: false))?.bytes, 3_194_000_000)
        XCTAssertEqual(plan.largest(.init(lowMemory: false, imageInput: true))?.bytes, plan.declaredLargest["default"])
        // Without an image the VAE encoder is not part of the run; with a ControlNet denoise grows by it.
        XCTAssertFalse(plan.schedule(.init(lowMemory: true)).contains { $0.stage == "vae_encode" })
        let steered = try XCTUnwrap(plan.largest(.init(lowMemory: true, controlNet: "Edges")))
        XCTAssertEqual(steered.packages, ["UnetChunk1", "UnetChunk2", "controlnet/Edges"])
        XCTAssertEqual(plan.largestPackage?.name, "TextEncoder2")
        let text = plan.describe().joined(separator: "\n")
        XCTAssertTrue(text.contains("low memory peak: 1.36 GB at denoise"), text)
        XCTAssertTrue(text.contains("(the same peaks as the manifest's own plan)"), text)
        var disagreeing = plan
        disagreeing.declaredLargest["low_memory"] = 1
        XCTAssertTrue(disagreeing.describe().joined().contains("the manifest's own plan says low_memory"))
    }

    func testPreflightSaysWhatToDoInsteadOfCrashing() throws {
        let plan = try manifest().memoryPlan
        let mb = Self.mb
        // Plenty: fits.
        guard case .fits = MemoryPreflight.check(plan, options: .init(lowMemory: true), availableBytes: 3000 * mb) else {
            return XCTFail("should fit")
        }
        // Enough for low memory only: says to turn it on.
        guard case .tooLarge(let message) = MemoryPreflight.check(plan, options: .init(lowMemory: false), availableBytes: 2500 * mb) else {
            return XCTFail("should not fit")
        }
        XCTAssertTrue(message.contains("turn on Low memory"), message)
        XCTAssertTrue(message.contains("with all its models loaded at once"), message)
        XCTAssertFalse(message.contains("\n"))
        // Not even low memory: a smaller bundle.
        guard case .tooLarge(let small) = MemoryPreflight.check(plan, options: .init(lowMemory: true), availableBytes: 1000 * mb) else {
            return XCTFail("should not fit")
        }
        XCTAssertTrue(small.contains("at its largest stage (denoise: UnetChunk1 + UnetChunk2"), small)
        XCTAssertTrue(small.contains("--size 768x768 --chunk-unet"), small)
        // The Mac does not say: unknown, no refusal.
        guard case .unknown = MemoryPreflight.check(plan, options: .init(lowMemory: true), availableBytes: nil) else {
            return XCTFail("unknown without a figure")
        }
        XCTAssertEqual(MemoryPreflight.needed(.init(stage: "denoise", packages: [], bytes: 1000)), 1250)
    }

    func testAFormatOneBundleFallsBackToPackageSizesAndSaysSo() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-v1-\(UUID().uuidString)")
        let resources = root.appendingPathComponent("Resources")
        defer { try? FileManager.default.removeItem(at: root) }
        for (name, bytes) in [("TextEncoder", 100), ("TextEncoder2", 300), ("UnetChunk1", 600), ("UnetChunk2", 500), ("VAEDecoder", 80)] {
            let url = resources.appendingPathComponent("\(name).mlpackage/Data")
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
            try Data(count: bytes).write(to: url.appendingPathComponent("weight.bin"))
        }
        try Data(#"{"kind": "coreml", "format_version": 1, "model_type": "sdxl"}"#.utf8).write(to: root.appendingPathComponent("pocketsd.json"))
        let m = try BundleManifest.load(resources: resources)
        XCTAssertEqual(m.memoryPlan.source, .diskSizes)
        XCTAssertEqual(m.memoryPlan.largest(.init(lowMemory: true))?.bytes, 1100)
        XCTAssertEqual(m.memoryPlan.largest(.init(lowMemory: false))?.bytes, 1580)
        XCTAssertTrue(m.memoryPlan.describe().first?.contains("package sizes on disk") ?? false)
    }
}

final class RunJournalTests: XCTestCase {
    func testALeftoverRunIsReportedOnceAtTheNextLaunch() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-journal-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let journal = RunJournal(folder: folder)
        XCTAssertNil(journal.takeLeftover())
        var entry = RunJournal.Entry(started: Date(timeIntervalSince1970: 1_800_000_000), prompt: "a red circle", seed: 7,
                                     bundle: "/b", lowMemory: false, plannedPeakMB: 3046)
        try journal.begin(entry)
        entry.stage = "denoise"
        entry.step = 3
        entry.footprintMB = 2901.4
        journal.update(entry)
        // The process dies here; at the next launch:
        let leftover = try XCTUnwrap(RunJournal(folder: folder).takeLeftover())
        XCTAssertEqual(leftover, entry)
        XCTAssertNil(journal.takeLeftover(), "shown once")
        let notice = RunJournal.notice(for: leftover)
        XCTAssertTrue(notice.contains("while denoising (step 3)"), notice)
        XCTAssertTrue(notice.contains("2901 MB"), notice)
        XCTAssertTrue(notice.contains("Turn on Low memory"), notice)
        XCTAssertFalse(notice.contains("\n"))
    }

    func testARunThatEndsLeavesNothing() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-journal-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let journal = RunJournal(folder: folder)
        try journal.begin(.init(started: Date(), prompt: "p", seed: 1, bundle: "/b", lowMemory: true))
        journal.end()
        XCTAssertNil(journal.takeLeftover())
    }
}

final class ModelDeliveryTests: XCTestCase {
    func testCompiledModelsAreKeyedByTheManifestDigestElseByTheFiles() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-cache-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let cache = CompiledModelCache(root: root.appendingPathComponent("Compiled"))
        let withDigest = try BundleManifest(data: Data(ManifestV2Tests.json.utf8))
        let package = root.appendingPathComponent("Resources/TextEncoder.mlpackage")
        XCTAssertEqual(cache.compiledURL(component: "TextEncoder", package: package, manifest: withDigest).lastPathComponent,
                       "TextEncoder-0123456789abcdef.mlmodelc")

        // No digest: path, size and time. Changing the package changes the name, so it compiles again.
        try FileManager.default.createDirectory(at: package, withIntermediateDirectories: true)
        try Data(count: 10).write(to: package.appendingPathComponent("Manifest.json"))
        let plain = BundleManifest.sdxlDefaults()
        let before = cache.compiledURL(component: "TextEncoder", package: package, manifest: plain)
        XCTAssertEqual(before, cache.compiledURL(component: "TextEncoder", package: package, manifest: plain), "stable")
        try Data(count: 20).write(to: package.appendingPathComponent("weight.bin"))
        XCTAssertNotEqual(before, cache.compiledURL(component: "TextEncoder", package: package, manifest: plain))
        XCTAssertTrue(cache.compiledURL(component: "controlnet/Edges", package: package, manifest: plain).lastPathComponent.hasPrefix("controlnet_Edges-"))

        XCTAssertFalse(cache.isCompiled(before))
        try FileManager.default.createDirectory(at: before, withIntermediateDirectories: true)
        XCTAssertTrue(cache.isCompiled(before))
        try cache.removeAll()
        XCTAssertFalse(cache.isCompiled(before))
        XCTAssertEqual(CompiledModelCache.fnv1a64(Array("a".utf8)), 0xAF63_DC4C_8601_EC8C, "FNV-1a's published value for \"a\"")
    }

    func testICloudPlaceholdersAreFoundInsidePackages() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-icloud-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let weights = root.appendingPathComponent("Unet.mlpackage/Data/com.apple.CoreML/weights")
        try FileManager.default.createDirectory(at: weights, withIntermediateDirectories: true)
        try Data().write(to: weights.appendingPathComponent(".weight.bin.icloud"))
        try Data().write(to: root.appendingPathComponent(".merges.txt.icloud"))
        try Data().write(to: root.appendingPathComponent("vocab.json"))
        let pending = ICloudFiles.placeholders(under: root).map { $0.path.replacingOccurrences(of: root.path, with: "") }
        XCTAssertEqual(pending, ["/Unet.mlpackage/Data/com.apple.CoreML/weights/weight.bin", "/merges.txt"])
    }
}

/// The format 1 bundle the repository keeps as a fixture (tests/fixtures/bundle_v1, written by pocketsd 0.1.0):
/// what users already have on disk must still be read.
final class FormatOneFixtureTests: XCTestCase {
    let root = DomainPresetsTests.repoRoot.appendingPathComponent("tests/fixtures/bundle_v1")

    func testTheRepositorysFormatOneBundleIsRead() throws {
        guard FileManager.default.fileExists(atPath: root.appendingPathComponent("pocketsd.json").path) else {
            throw XCTSkip("tests/fixtures/bundle_v1 is not in this checkout")
        }
        let resources = root.appendingPathComponent("Resources")
        let m = try BundleManifest.load(resources: resources)
        XCTAssertEqual(m.formatVersion, 1)
        XCTAssertEqual(m.family, "sdxl")
        XCTAssertEqual(m.imageSize.width, 128)
        XCTAssertEqual(m.latentSize.height, 16)
        XCTAssertEqual(m.unetBatch, 2)
        XCTAssertEqual(m.memoryPlan.source, .diskSizes, "format 1 has no plan: package sizes on disk stand in")
        XCTAssertEqual(m.memoryPlan.stages.map(\.name), ["denoise"])
        let geometry = LoopGeometry(manifest: m, unetComponents: ["Unet"])
        XCTAssertEqual(geometry.latentShape, [1, 4, 16, 16])
        XCTAssertTrue(geometry.hiddenStatesChannelsFirst)
        XCTAssertEqual(m.component("Unet")?.input("text_embeds")?.shape, [2, 64])
        let cache = CompiledModelCache(root: URL(fileURLWithPath: "/c"))
        XCTAssertEqual(cache.compiledURL(component: "Unet", package: resources.appendingPathComponent("Unet.mlpackage"), manifest: m).lastPathComponent,
                       "Unet-1205bc9d5f42db76.mlmodelc", "the manifest's sha256 names the compiled model")
        // Only the UNet was converted (`--only Unet`): the app says what is missing.
        let text = try TextSummaries.describeBundle(at: root)
        XCTAssertTrue(text.contains("ready to run: no — the bundle has no TextEncoder"), text)
    }
}

final class RunJournalCompileTests: XCTestCase {
    func testAKillWhileCompilingIsNamed() {
        let entry = RunJournal.Entry(started: Date(), prompt: "", seed: 0, bundle: "/b", lowMemory: true, stage: "compiling")
        let notice = RunJournal.notice(for: entry)
        XCTAssertTrue(notice.hasPrefix("The app stopped while compiling the bundle's models without finishing"), notice)
        XCTAssertTrue(notice.contains("smaller bundle"), notice)
    }
}
