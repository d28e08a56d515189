import XCTest
@testable import PocketSDKit

/// What is loaded when: the fake models log every load, unload and prediction, and refuse to predict unloaded.
final class LoopOrderingTests: XCTestCase {
    let textEncoders: Set<String> = ["TextEncoder", "TextEncoder2"]
    let denoise: Set<String> = ["Unet", "UnetChunk1", "UnetChunk2", "controlnet/Edges"]

    func request(image: Bool = false, steps: Int = 4) -> DiffusionLoop.Request {
        DiffusionLoop.Request(prompt: "a red circle", negativePrompt: "blurry", steps: steps, guidance: 5, seed: 1,
                              scheduler: .dpmpp2m, initImage: image ? fixtureInitImage() : nil, strength: 0.75)
    }

    /// In low-memory mode at most one model is resident at any time — the UNet counting as one model with its
    /// chunks (and the ControlNet that feeds it): never both text encoders, never a text encoder with the UNet.
    func assertOneModelAtATime(_ log: CallLog, file: StaticString = #filePath, line: UInt = #line) {
        for resident in log.residentAfterLoads {
            let set = Set(resident)
            let isOneModel = set.count == 1 || set.isSubset(of: denoise)
            XCTAssertTrue(isOneModel, "resident together: \(resident)", file: file, line: line)
        }
        XCTAssertEqual(log.resident, [], "nothing stays loaded after a low-memory run", file: file, line: line)
    }

    func testLowMemoryKeepsOneModelResident() throws {
        for chunked in [false, true] {
            for image in [false, true] {
                var bundle = FakeBundle()
                bundle.chunked = chunked
                let (loop, _, residency) = bundle.make()
                try loop.prewarm()
                // Prewarm: one package at a time, chunks included.
                XCTAssertTrue(bundle.log.residentAfterLoads.allSatisfy { $0.count == 1 }, "\(bundle.log.residentAfterLoads)")
                let prewarmLoads = bundle.log.count("load")
                _ = try loop.run(request(image: image), timer: RunTimer())
                assertOneModelAtATime(bundle.log)
                XCTAssertEqual(residency.resident, [])
                // Every model was loaded again for its stage (the prewarm only compiled).
                XCTAssertEqual(bundle.log.count("load") - prewarmLoads, (chunked ? 2 : 1) + 3 + (image ? 1 : 0))
            }
        }
    }

    func testTheWeightsPeakIsTheMemoryPlansLargestStage() throws {
        var bundle = FakeBundle()
        bundle.chunked = true
        let (loop, _, residency) = bundle.make()
        residency.resetPeak()
        _ = try loop.run(request(image: true), timer: RunTimer())
        let plan = MemoryPlan.fromSizes(bundle.weights.filter { $0.key != "Unet" && !$0.key.hasPrefix("controlnet") })
        let largest = try XCTUnwrap(plan.largest(.init(lowMemory: true, imageInput: true)))
        XCTAssertEqual(residency.peakResidentBytes, largest.bytes)
        XCTAssertEqual(Set(residency.peakResidentPackages), Set(largest.packages))
        XCTAssertEqual(largest.packages, ["UnetChunk1", "UnetChunk2"])
        // Default mode holds everything: its plan's peak is the sum.
        let everything = try XCTUnwrap(plan.largest(.init(lowMemory: false, imageInput: true)))
        XCTAssertEqual(everything.bytes, 100 + 300 + 50 + 600 + 500 + 80)
    }

    func testTheUnetIsNotLoadedBeforeTheTextIsEncoded() throws {
        // Apple's generateImages asks the UNet for its input shapes first, which loads it; the loop reads them from
        // the manifest instead, so the first model loaded is a text encoder and the UNet waits for its stage.
        let bundle = FakeBundle()
        let (loop, _, _) = bundle.make()
        _ = try loop.run(request(), timer: RunTimer())
        let firstUnet = bundle.log.events.firstIndex(of: "load Unet")!
        let lastEncoder = bundle.log.events.lastIndex(of: "predict TextEncoder2")!
        XCTAssertGreaterThan(firstUnet, lastEncoder)
        XCTAssertEqual(bundle.log.events.first, "load TextEncoder")
    }

    func testCancelDuringDenoisingUnloadsInLowMemoryAndKeepsOtherwise() throws {
        for lowMemory in [true, false] {
            var bundle = FakeBundle()
            bundle.lowMemory = lowMemory
            bundle.chunked = true
            let (loop, _, residency) = bundle.make()
            try loop.prewarm()
            var steps = 0
            XCTAssertThrowsError(try loop.run(request(steps: 6), timer: RunTimer(), observe: { event in
                if case .step = event { steps += 1 }
            }, shouldContinue: { steps < 2 })) { error in
                XCTAssertTrue(error is CancellationError, "\(error)")
            }
            XCTAssertEqual(steps, 2)
            if lowMemory {
                XCTAssertEqual(residency.resident, [], "a cancelled low-memory run leaves nothing loaded")
                XCTAssertEqual(bundle.log.events.suffix(2).sorted(), ["unload UnetChunk1", "unload UnetChunk2"])
            } else {
                XCTAssertEqual(Set(residency.resident), ["TextEncoder", "TextEncoder2", "UnetChunk1", "UnetChunk2", "VAEDecoder"],
                               "kept for the next run")
            }
        }
    }

    func testAFailureUnloadsEverythingInBothModes() throws {
        for lowMemory in [true, false] {
            var bundle = FakeBundle()
            bundle.lowMemory = lowMemory
            let (loop, unet, residency) = bundle.make()
            try loop.prewarm()
            unet[0].failAtCall = 3
            XCTAssertThrowsError(try loop.run(request(), timer: RunTimer())) { error in
                XCTAssertEqual(error as? FakeError, .boom)
            }
            XCTAssertEqual(residency.resident, [], "lowMemory \(lowMemory)")
        }
    }

    func testACancelWhilePrewarmingStopsBetweenModels() throws {
        var bundle = FakeBundle()
        bundle.chunked = true
        let (loop, _, residency) = bundle.make()
        var asked = 0
        XCTAssertThrowsError(try loop.prewarm(shouldContinue: { asked += 1; return asked <= 3 })) { error in
            XCTAssertTrue(error is CancellationError)
        }
        XCTAssertEqual(bundle.log.count("load"), 3, "three models loaded, the fourth never started")
        XCTAssertEqual(residency.resident, [])
        XCTAssertEqual(residency.firstLoadSeconds.keys.sorted(), ["TextEncoder", "TextEncoder2", "VAEEncoder"])
    }

    func testDefaultModeLoadsOnceAndKeepsModelsBetweenRuns() throws {
        var bundle = FakeBundle()
        bundle.lowMemory = false
        let (loop, _, residency) = bundle.make()
        let timer = RunTimer()
        try loop.prewarm(timer: timer)
        XCTAssertEqual(residency.resident, ["TextEncoder", "TextEncoder2", "Unet", "VAEDecoder"], "the VAE encoder waits for an image run")
        let loadsAfterPrewarm = bundle.log.count("load")
        _ = try loop.run(request(), timer: RunTimer())
        _ = try loop.run(request(), timer: RunTimer())
        XCTAssertEqual(bundle.log.count("load"), loadsAfterPrewarm, "no reloads between runs")
        XCTAssertEqual(bundle.log.count("unload"), 0)
        let second = RunTimer()
        _ = try loop.run(request(image: true), timer: second)
        XCTAssertEqual(bundle.log.count("load"), loadsAfterPrewarm + 1, "the encoder joins the first image run")
        XCTAssertTrue(residency.isResident("VAEEncoder"))
    }

    func testAFailedLoadLeavesNothingLoaded() throws {
        let bundle = FakeBundle()
        let (loop, _, residency) = bundle.make()
        (loop.models.vaeDecoder as! FakeModel).failOnLoad = true
        XCTAssertThrowsError(try loop.run(request(), timer: RunTimer()))
        XCTAssertEqual(residency.resident, [])
        XCTAssertFalse(bundle.log.events.contains("predict VAEDecoder"))
    }

    func testResidencyEventsFeedTheLoadingBoard() throws {
        var bundle = FakeBundle()
        bundle.chunked = true
        let (loop, _, residency) = bundle.make()
        var board = LoadingBoard(models: ["TextEncoder", "TextEncoder2", "VAEEncoder", "UnetChunk1", "UnetChunk2", "VAEDecoder"])
        var sawBusy = false
        residency.observer = { event in
            board.apply(event, at: 10)
            if board.isBusy { sawBusy = true }
        }
        try loop.prewarm()
        XCTAssertTrue(sawBusy)
        XCTAssertFalse(board.isBusy)
        for row in board.rows {
            guard case .loaded(_, let first) = row.state else { return XCTFail("\(row)") }
            XCTAssertTrue(first)
            XCTAssertTrue(row.text(now: 12).contains("loaded in 0 s (first load)"), row.text(now: 12))
        }
        board.set("UnetChunk1", .loading(since: 0))
        XCTAssertEqual(board.rows.first { $0.name == "UnetChunk1" }?.text(now: 125), "UnetChunk1  loading 2 min 5 s")
        board.set("UnetChunk2", .compiling(since: 100))
        XCTAssertEqual(board.rows.first { $0.name == "UnetChunk2" }?.text(now: 107), "UnetChunk2  compiling the .mlpackage 7 s")
    }
}

/// Inputs beyond text → image: batch-one UNets, flat time_ids, inpainting and ControlNet residuals.
final class LoopInputsTests: XCTestCase {
    func run(_ bundle: FakeBundle, _ request: DiffusionLoop.Request) throws -> (DiffusionLoop.Output, [FakeUNet]) {
        let (loop, unet, _) = bundle.make()
        return (try loop.run(request, timer: RunTimer()), unet)
    }

    let base = DiffusionLoop.Request(prompt: "a red circle", steps: 5, guidance: 5, seed: 3, scheduler: .euler)

    func testABatchOneUnetGivesTheSameImageInTwoCallsPerStep() throws {
        let (two, unet2) = try run(FakeBundle(), base)
        var one = FakeBundle()
        one.unetBatch = 1
        let (single, unet1) = try run(one, base)
        XCTAssertLessThan(single.latents.maxAbsDifference(two.latents), 1e-6)
        XCTAssertEqual(unet2[0].calls, 5)
        XCTAssertEqual(unet1[0].calls, 10)
    }

    func testFlatTimeIdsAndChunksGiveTheSameImage() throws {
        let (plain, _) = try run(FakeBundle(), base)
        var flat = FakeBundle()
        flat.flatTimeIds = true
        flat.chunked = true
        let (other, unet) = try run(flat, base)
        XCTAssertEqual(unet[1].lastInputs["time_ids"]?.shape, [12], "Apple's older (12,) layout")
        XCTAssertNotNil(unet[1].lastInputs["partial"], "chunk 2 gets chunk 1's outputs")
        XCTAssertLessThan(other.latents.maxAbsDifference(plain.latents), 1e-6)
    }

    func testNoGuidanceRunsBatchOneThroughABatchTwoUnet() throws {
        var request = base
        request.guidance = 1
        let (_, unet) = try run(FakeBundle(), request)
        XCTAssertEqual(unet[0].lastInputs["sample"]?.shape, [2, 4, 3, 5], "padded to the model's batch")
        XCTAssertEqual(unet[0].calls, 5)
    }

    func testInpaintingKeepsTheUnmaskedLatentsAndRepaintsTheRest() throws {
        var request = base
        request.initImage = fixtureInitImage()
        request.strength = 0.75   // below 1, inpainting starts from the noised image as image → image does
        let (plain, _) = try run(FakeBundle(), request)

        // Mask: repaint columns 0–2 of 5, keep 3–4.
        let mask = Tensor(shape: [1, 1, 3, 5], scalars: (0..<15).map { $0 % 5 < 3 ? 1 : 0 })
        request.mask = mask
        let (painted, _) = try run(FakeBundle(), request)

        // The kept columns end as the encoded image itself: the last step puts back the un-noised original.
        var encodeOnly = FakeBundle()
        encodeOnly.lowMemory = true
        let (loop, _, _) = encodeOnly.make()
        var keepAll = request
        keepAll.mask = .zeros([1, 1, 3, 5])
        let kept = try loop.run(keepAll, timer: RunTimer()).latents
        for c in 0..<4 {
            for y in 0..<3 {
                for x in 0..<5 {
                    let i = (c * 3 + y) * 5 + x
                    if x >= 3 {
                        XCTAssertEqual(painted.latents.scalars[i], kept.scalars[i], "kept (\(c), \(y), \(x))")
                    } else {
                        // The fake UNet is element-wise, so the repainted columns equal plain image → image.
                        XCTAssertEqual(painted.latents.scalars[i], plain.latents.scalars[i], accuracy: 1e-5, "repainted (\(c), \(y), \(x))")
                    }
                }
            }
        }
        XCTAssertGreaterThan(kept.maxAbsDifference(plain.latents), 0.1, "keeping and repainting differ")
    }

    func testTheLatentMaskRepaintsEveryCellTheFeatherTouches() throws {
        var pixels = [UInt8](repeating: 0, count: 24 * 40)
        for y in 0..<24 { for x in 20..<40 { pixels[y * 40 + x] = 200 } }
        pixels[0] = 127   // below one half: keep
        let gray = GrayImage(width: 40, height: 24, pixels: pixels)
        let sharp = try ImageTensors.inpaintMask(gray, blur: 0, latentHeight: 3, latentWidth: 5)
        XCTAssertEqual(sharp.latent.shape, [1, 1, 3, 5])
        XCTAssertEqual(sharp.latent.scalars, [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1], "any pixel of a cell repaints it")
        XCTAssertEqual(sharp.alpha.scalars[0], 0)
        // The feather reaches blur px: x = 15 is 5 px from the hole, outside a 4 px feather, inside a 5 px one.
        XCTAssertEqual(try ImageTensors.inpaintMask(gray, blur: 4, latentHeight: 3, latentWidth: 5).latent.scalars[1], 0)
        XCTAssertEqual(try ImageTensors.inpaintMask(gray, blur: 5, latentHeight: 3, latentWidth: 5).latent.scalars[1], 1)
        XCTAssertThrowsError(try ImageTensors.inpaintMask(GrayImage(width: 40, height: 24, pixels: [UInt8](repeating: 0, count: 960)),
                                                          blur: 4, latentHeight: 3, latentWidth: 5))
        XCTAssertThrowsError(try ImageTensors.inpaintMask(GrayImage(width: 40, height: 24, pixels: [UInt8](repeating: 255, count: 960)),
                                                          blur: 4, latentHeight: 3, latentWidth: 5))
    }

    func testControlNetResidualsReachTheUnetScaled() throws {
        let control = ImageTensors.controlTensor(lines: (0..<(24 * 40)).map { $0 % 3 == 0 }, width: 40, height: 24)
        XCTAssertEqual(control.shape, [1, 3, 24, 40])
        var request = base
        request.controlNet = "Edges"
        request.controlImage = control
        request.controlScale = 0
        var capable = FakeBundle()
        capable.controlInputs = true
        let (plain, _) = try run(FakeBundle(), base)
        let (unsteered, plainUnet) = try run(capable, base)
        XCTAssertEqual(plainUnet[0].lastInputs["mid_block_res_sample"]?.scalars.allSatisfy { $0 == 0 }, true,
                       "no ControlNet: the residual inputs get zeros")
        XCTAssertLessThan(unsteered.latents.maxAbsDifference(plain.latents), 1e-6)
        let (zero, _) = try run(capable, request)
        XCTAssertLessThan(zero.latents.maxAbsDifference(plain.latents), 1e-6, "scale 0 changes nothing")
        // A UNet without residual inputs cannot use a ControlNet: one sentence, not a silent no-op.
        XCTAssertThrowsError(try run(FakeBundle(), request)) { error in
            XCTAssertTrue(String(describing: error).contains("takes no ControlNet residuals"), "\(error)")
        }
        request.controlScale = 1
        var bundle = FakeBundle()      // a fresh log
        bundle.controlInputs = true
        let (loop, unet, _) = bundle.make()
        let steered = try loop.run(request, timer: RunTimer())
        XCTAssertGreaterThan(steered.latents.maxAbsDifference(plain.latents), 1e-3)
        XCTAssertEqual(unet[0].lastInputs["mid_block_res_sample"]?.shape, [2, 4, 3, 5])
        let net = loop.models.controlNets["Edges"] as! FakeControlNet
        XCTAssertEqual(net.lastCondition?.shape, [2, 3, 24, 40], "the control image repeated over the guidance batch")
        // Low memory: the ControlNet is resident with the UNet only.
        let loads = bundle.log.events.filter { $0.hasPrefix("load") || $0.hasPrefix("unload") }
        XCTAssertEqual(loads, ["load TextEncoder", "unload TextEncoder", "load TextEncoder2", "unload TextEncoder2",
                               "load controlnet/Edges", "load Unet", "unload Unet", "unload controlnet/Edges",
                               "load VAEDecoder", "unload VAEDecoder"])
    }

    func testBadRequestsAreOneSentence() throws {
        let (loop, _, _) = FakeBundle().make()
        var wrongSize = base
        wrongSize.initImage = .zeros([1, 3, 8, 8])
        var maskOnly = base
        maskOnly.mask = .zeros([1, 1, 3, 5])
        var noControlImage = base
        noControlImage.controlNet = "Edges"
        var unknownNet = base
        unknownNet.controlNet = "Depth"
        unknownNet.controlImage = .zeros([1, 3, 24, 40])
        for (request, fragment) in [(wrongSize, "the bundle takes [1, 3, 24, 40]"), (maskOnly, "needs an image"),
                                    (noControlImage, "needs a control image"), (unknownNet, "it has: Edges")] {
            XCTAssertThrowsError(try loop.run(request, timer: RunTimer())) { error in
                XCTAssertTrue(String(describing: error).contains(fragment), "\(error)")
            }
        }
        var noEncoder = FakeBundle()
        noEncoder.withEncoder = false
        var image = base
        image.initImage = fixtureInitImage()
        XCTAssertThrowsError(try noEncoder.make().loop.run(image, timer: RunTimer())) { error in
            XCTAssertTrue(String(describing: error).contains("no VAEEncoder"), "\(error)")
        }
    }

    func testAnSDBundleHasOneEncoderAndNoAddedConditioning() throws {
        let log = CallLog()
        let unet = FakeUNet(batch: 2, sdxl: false, log: log)
        unet.inputSpecs = unet.inputSpecs.map { $0.name == "encoder_hidden_states" ? TensorSpec(name: $0.name, shape: [2, 4, 1, 77]) : $0 }
        let models = DiffusionLoop.Models(textEncoders: [FakeTextEncoder(index: 0, log: log)], unet: [unet], vaeDecoder: FakeDecoder(log: log))
        let geometry = LoopGeometry(family: "sd", imageHeight: 24, imageWidth: 40, scalingFactor: 0.18215, forceZerosForEmptyPrompt: false)
        let loop = DiffusionLoop(models: models, geometry: geometry, schedulerConfig: .sdxlDefault, residency: ModelResidency(), lowMemory: true)
        _ = try loop.run(base, timer: RunTimer())
        XCTAssertNil(unet.lastInputs["time_ids"])
        XCTAssertNil(unet.lastInputs["text_embeds"])
        XCTAssertEqual(unet.lastInputs["encoder_hidden_states"]?.shape, [2, 4, 1, 77])
    }
}
