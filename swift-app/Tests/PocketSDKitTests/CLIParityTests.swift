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
            return report.json["input"]
        }
        let steered = try inputJSON { $0.sketchPath = "s.png"; $0.controlNet = "Edges"; $0.controlScale = 0.6; $0.controlGuidanceEnd = 0.8 }
        XCTAssertEqual(steered?["controlnet_scale"], .number(0.6))
        XCTAssertEqual(steered?["control_guidance"], .array([.number(0), .number(0.8)]))
        let plain = try inputJSON { $0.sketchPath = "s.png" }
        XCTAssertNil(plain?["controlnet_scale"], "absent without a ControlNet, as in the Python report")
        XCTAssertNil(plain?["control_guidance"])
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
}
