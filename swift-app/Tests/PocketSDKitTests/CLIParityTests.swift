import XCTest
@testable import PocketSDKit

/// The Swift tool and app against the Python CLI (issue 23, item 7): the ControlNet's flags, its guidance window,
/// the report's ControlNet fields.
final class CLIParityTests: XCTestCase {
    func testControlGuidanceWindowMatchesThePythonLoop() throws {
        // Fixtures/control_guidance.json is Python's control_active on a grid (tests/test_swift_parity.py holds it to Python).
        let cases = try XCTUnwrap(Fixtures.load("control_guidance")["cases"]?.array)
        XCTAssertEqual(cases.count, 42)
        for item in cases {
            let steps = try XCTUnwrap(item["steps"]?.int), start = try XCTUnwrap(item["start"]?.double), end = try XCTUnwrap(item["end"]?.double)
            let expected = try XCTUnwrap(item["active"]?.array).map { $0 == .bool(true) }
            let swift = (0..<steps).map { DiffusionLoop.controlActive(step: $0, of: steps, start: start, end: end) }
            XCTAssertEqual(swift, expected, "steps \(steps), [\(start), \(end)]")
        }
    }

    func controlRequest(start: Double, end: Double) -> DiffusionLoop.Request {
        DiffusionLoop.Request(prompt: "a red circle", negativePrompt: "blurry", steps: 4, guidance: 5, seed: 1, scheduler: .euler,
                              controlNet: "Edges",
                              controlImage: ImageTensors.controlTensor(lines: (0..<(24 * 40)).map { $0 % 3 == 0 }, width: 40, height: 24),
                              controlGuidanceStart: start, controlGuidanceEnd: end)
    }

    func testTheControlNetSteersOnlyItsShareOfTheSteps() throws {
        var bundle = FakeBundle()
        bundle.controlInputs = true
        let (loop, unet, _) = bundle.make()
        let windowed = try loop.run(controlRequest(start: 0.25, end: 0.75), timer: RunTimer())
        XCTAssertEqual(bundle.log.count("predict controlnet/Edges"), 2, "steps 2 and 3 of 4")
        XCTAssertEqual(unet[0].lastInputs["mid_block_res_sample"]?.scalars.allSatisfy { $0 == 0 }, true,
                       "the last step is outside the window: zero residuals")

        var whole = FakeBundle()
        whole.controlInputs = true
        let (fullLoop, _, _) = whole.make()
        let full = try fullLoop.run(controlRequest(start: 0, end: 1), timer: RunTimer())
        XCTAssertEqual(whole.log.count("predict controlnet/Edges"), 4)
        XCTAssertGreaterThan(full.latents.maxAbsDifference(windowed.latents), 1e-4, "the window changes the image")
    }

    func testTheReportCarriesTheControlNetFieldsOnlyWithAControlNet() throws {
        let manifest = BundleManifest(tree: try JSONValue.parse(Data(#"{"components": {"controlnet/Edges": {"stage": "denoise"}}}"#.utf8)))
        func inputJSON(_ change: (inout GenerationRequest) -> Void) throws -> JSONValue? {
            var request = GenerationRequest(prompt: "x")
            request.seed = 1
            change(&request)
            let report = GenerationReport(
                request: try request.resolve(catalog: nil, manifest: manifest), size: [128, 128],
                model: .init(path: "/b", unetBytes: 1, bitsPerWeight: nil),
                timings: .init(load: 0, textEncode: 0, unetSteps: [0], vaeDecode: 0, total: 0),
                memory: .init(peakRSSMB: 1, peakFootprintMB: nil), output: "o.png", backendDetails: .init(), device: nil)
            XCTAssertEqual(report.json["unet_mode"], JSONValue.null, "the Python report's key, null for a Core ML bundle")
            return report.json["input"]
        }
        let steered = try inputJSON { $0.sketchPath = "s.png"; $0.controlNet = "Edges"; $0.controlScale = 0.6; $0.controlGuidanceEnd = 0.8 }
        XCTAssertEqual(steered?["controlnet_scale"], .number(0.6))
        XCTAssertEqual(steered?["control_guidance"], .array([.number(0), .number(0.8)]))
        let plain = try inputJSON { $0.sketchPath = "s.png" }
        XCTAssertNil(plain?["controlnet_scale"], "absent without a ControlNet, as in the Python report")
        XCTAssertNil(plain?["control_guidance"])
        XCTAssertNil(plain?["mask_blur"], "mask fields only with a mask")
        let masked = try inputJSON { $0.imagePath = "i.png"; $0.maskPath = "m.png"; $0.maskBlur = 2 }
        XCTAssertEqual(masked?["mask_blur"], .integer(2))
        XCTAssertEqual(masked?["paste_back"], .bool(true))
    }

    func testTheOldFlagNameSaysTheNewOne() {
        XCTAssertThrowsError(try CommandLineOptions.parse(["generate", "p", "--resources", "R", "--controlnet", "E", "--sketch", "s",
                                                           "--control-scale", "0.5"])) { error in
            XCTAssertTrue(String(describing: error).contains("--controlnet-scale"), "\(error)")
        }
    }

    // MARK: the app's form

    func testTheAppSendsOnlyWhatTheUserChangedSoThePresetApplies() throws {
        let preset = DomainPreset(name: "interior", description: "rooms", promptTemplate: "{prompt}, interior photo",
                                  negativePrompt: "", steps: 30, guidance: 6.0, scheduler: "dpmpp2m")
        let catalog = DomainCatalog(domains: [preset])
        var form = SettingsForm()
        form.setSteps(12)                 // changed before the domain was picked: the preset's value replaces it
        form.show(preset: preset)
        XCTAssertEqual(form.steps, 30, "the form shows the preset's values")
        XCTAssertEqual(form.scheduler, .dpmpp2m)

        var request = GenerationRequest(prompt: "a sofa")
        request.domain = "interior"
        form.fill(&request)
        XCTAssertNil(request.steps)
        XCTAssertNil(request.guidance)
        XCTAssertNil(request.scheduler)
        var resolved = try request.resolve(catalog: catalog)
        XCTAssertEqual([Double(resolved.steps), resolved.guidance], [30, 6.0])
        XCTAssertEqual(resolved.scheduler, .dpmpp2m)

        form.setGuidance(8)               // changed after: the user's value wins, the rest stays the preset's
        request = GenerationRequest(prompt: "a sofa")
        request.domain = "interior"
        form.fill(&request)
        resolved = try request.resolve(catalog: catalog)
        XCTAssertEqual([Double(resolved.steps), resolved.guidance], [30, 8])
    }

    func testTheStartsOwnStrengthAppliesUntilTheUserSetsOne() throws {
        var form = SettingsForm()
        for (start, path, expected) in [(SettingsForm.Start.sketch, \GenerationRequest.sketchPath, ResolvedRequest.defaultSketchStrength),
                                         (.mask, \GenerationRequest.maskPath, ResolvedRequest.defaultMaskStrength)] {
            form.show(start: start)
            XCTAssertEqual(form.strength, expected, "the form shows the start's strength")
            var request = GenerationRequest(prompt: "x")
            if start == .mask { request.imagePath = "photo" }
            request[keyPath: path] = "f"
            form.fill(&request)
            XCTAssertNil(request.strength, "not sent: resolve picks the start's own")
            XCTAssertEqual(try request.resolve(catalog: nil).strength, expected)
        }
        form.setStrength(0.5)
        form.show(start: .sketch)
        XCTAssertEqual(form.strength, 0.5, "a strength the user set stays")
        var request = GenerationRequest(prompt: "x")
        request.sketchPath = "s"
        form.fill(&request)
        XCTAssertEqual(request.strength, 0.5)
        request.controlNet = "Edges"
        request.strength = nil
        form.fill(&request)
        XCTAssertNil(request.strength, "a ControlNet run takes no strength")
    }

    // MARK: inpainting

    /// Masks through the Python CLI's load_mask and latent_mask, and whole inpainting runs of its loop over the same
    /// fake networks (Fixtures/inpaint.json, scripts/make_fixtures.py): alpha, latent mask, final latents, pixels.
    func testInpaintingMatchesThePythonLoop() throws {
        let fixture = try Fixtures.load("inpaint")
        func gray(_ item: JSONValue) -> GrayImage {
            GrayImage(width: 40, height: 24, pixels: item["pixels"]!.array!.map { UInt8($0.int!) })
        }
        func floats(_ value: JSONValue?) -> [Float] { value!.array!.map { Float($0.double!) } }
        let masks = fixture["masks"]!.array!
        XCTAssertEqual(masks.count, 6)
        for item in masks {
            let mask = try ImageTensors.inpaintMask(gray(item), blur: item["blur"]!.int!, latentHeight: 3, latentWidth: 5)
            let alpha = floats(item["alpha"])
            XCTAssertLessThan(zip(mask.alpha.scalars, alpha).map { abs($0 - $1) }.max()!, 1e-6, "\(item["kind"]!) blur \(item["blur"]!)")
            XCTAssertEqual(mask.latent.scalars, floats(item["latent"]), "\(item["kind"]!) blur \(item["blur"]!)")
        }
        let masksByCase = Dictionary(masks.map { ("\($0["kind"]!.string!)-\($0["blur"]!.int!)", $0) }, uniquingKeysWith: { a, _ in a })
        var worst: Float = 0
        for run in fixture["runs"]!.array! {
            let key = "\(run["kind"]!.string!)-\(run["blur"]!.int!)"
            let mask = try ImageTensors.inpaintMask(gray(masksByCase[key]!), blur: run["blur"]!.int!, latentHeight: 3, latentWidth: 5)
            var bundle = FakeBundle()
            bundle.inpaintUNet = run["inpaint_unet"]?.bool ?? false
            let (loop, _, _) = bundle.make()
            let request = DiffusionLoop.Request(
                prompt: run["prompt"]!.string!, steps: run["steps"]!.int!, guidance: run["guidance"]!.double!,
                seed: UInt32(run["seed"]!.int!), scheduler: SchedulerKind(rawValue: run["scheduler"]!.string!)!,
                initImage: fixtureInitImage(), strength: run["strength"]!.double!, mask: mask.latent,
                maskAlpha: mask.alpha, pasteBack: run["paste_back"]!.bool!)
            let label = "\(request.scheduler) strength \(request.strength) \(key) paste-back \(request.pasteBack) inpainting UNet \(bundle.inpaintUNet)"
            let output = try loop.run(request, timer: RunTimer())
            XCTAssertEqual(output.timesteps, floats(run["timesteps"]).map(Double.init), label)
            let expected = Tensor(shape: output.latents.shape, scalars: floats(run["latents"]))
            let scale = max(1, expected.scalars.map(abs).max() ?? 1)
            XCTAssertLessThan(output.latents.maxAbsDifference(expected) / scale, 1e-5, label)
            worst = max(worst, output.latents.maxAbsDifference(expected) / scale)
            let pixels = try ImageTensors.rgb(output.image).pixels
            let reference = run["pixels"]!.array!.map { UInt8($0.int!) }
            let off = zip(pixels, reference).filter { $0 != $1 }
            XCTAssertTrue(off.allSatisfy { abs(Int($0) - Int($1)) <= 1 }, "\(label): pixels differ by more than 1")
            XCTAssertLessThanOrEqual(off.count, pixels.count / 100, "\(label): \(off.count) pixels differ")
        }
        XCTAssertEqual(fixture["runs"]!.array!.filter { $0["inpaint_unet"]?.bool == true }.count, 2)
        print("inpainting parity: largest relative latent difference \(worst)")

        // An inpainting UNet needs the image and the mask (the Python loop's sentence).
        var bundle = FakeBundle()
        bundle.inpaintUNet = true
        let (loop, _, _) = bundle.make()
        XCTAssertThrowsError(try loop.run(DiffusionLoop.Request(prompt: "p", steps: 3, guidance: 5, seed: 1, scheduler: .euler),
                                          timer: RunTimer())) { error in
            XCTAssertTrue("\(error)".contains("is an inpainting UNet (9 input channels"), "\(error)")
        }
    }

    func testTheMaskFlagsAreThePythonCLIs() throws {
        let o = try CommandLineOptions.parse(["generate", "p", "--resources", "R", "--image", "i.png", "--mask", "m.png",
                                              "--mask-blur", "9", "--no-paste-back"])
        guard case .generate(let options) = o else { return XCTFail("\(o)") }
        XCTAssertEqual(options.request.maskBlur, 9)
        XCTAssertEqual(options.request.pasteBack, false)
        let resolved = try options.request.resolve(catalog: nil)
        XCTAssertEqual(resolved.maskBlur, 9)
        XCTAssertFalse(resolved.pasteBack)
        var plain = GenerationRequest(prompt: "x")
        plain.imagePath = "i.png"
        plain.maskPath = "m.png"
        XCTAssertEqual(try plain.resolve(catalog: nil).maskBlur, 4)
        XCTAssertTrue(try plain.resolve(catalog: nil).pasteBack)
        plain.maskBlur = 65
        XCTAssertThrowsError(try plain.resolve(catalog: nil)) { XCTAssertTrue("\($0)".contains("0..64"), "\($0)") }
        var noMask = GenerationRequest(prompt: "x")
        noMask.imagePath = "i.png"
        noMask.pasteBack = false
        XCTAssertThrowsError(try noMask.resolve(catalog: nil)) { XCTAssertTrue("\($0)".contains("only apply with --mask"), "\($0)") }
    }
}
