import XCTest
@testable import PocketSDKit

final class GenerationRequestTests: XCTestCase {
    let catalog = DomainCatalog(domains: [
        DomainPreset(name: "logo", description: "flat", promptTemplate: "{prompt}, flat vector logo",
                     negativePrompt: "photo", steps: 12, guidance: 7.5, scheduler: "euler"),
        DomainPreset(name: "poster-style", description: "lora", promptTemplate: "{prompt}, poster style",
                     negativePrompt: "", steps: 20, guidance: 5, scheduler: "dpmpp2m",
                     lora: .init(file: "poster.safetensors", scale: 0.8)),
    ])

    func testPresetFillsWhatTheUserLeftUnset() throws {
        var request = GenerationRequest(prompt: "a red circle")
        request.domain = "logo"
        request.seed = 7
        let resolved = try request.resolve(catalog: catalog)
        XCTAssertEqual(resolved.expandedPrompt, "a red circle, flat vector logo")
        XCTAssertEqual(resolved.prompt, "a red circle")
        XCTAssertEqual(resolved.negativePrompt, "photo")
        XCTAssertEqual(resolved.steps, 12)
        XCTAssertEqual(resolved.guidance, 7.5)
        XCTAssertEqual(resolved.domain, "logo")
        // The app has its own Euler now: what the preset asks is what runs.
        XCTAssertEqual(resolved.scheduler, .euler)
        XCTAssertTrue(resolved.notes.isEmpty)
    }

    func testExplicitOptionsWinOverThePreset() throws {
        var request = GenerationRequest(prompt: "a red circle")
        request.domain = "LOGO"
        request.steps = 3
        request.guidance = 1.5
        request.negativePrompt = ""
        request.scheduler = "DDIM"
        request.seed = 1
        let resolved = try request.resolve(catalog: catalog)
        XCTAssertEqual([resolved.steps], [3])
        XCTAssertEqual(resolved.guidance, 1.5)
        XCTAssertEqual(resolved.negativePrompt, "")
        XCTAssertEqual(resolved.scheduler, .ddim)
        XCTAssertTrue(resolved.notes.isEmpty)
    }

    func testDefaultsWithoutDomainAndInjectedSeed() throws {
        let resolved = try GenerationRequest(prompt: "x").resolve(catalog: nil, randomSeed: { 42 })
        XCTAssertEqual(resolved.seed, 42)
        XCTAssertEqual(resolved.steps, ResolvedRequest.defaultSteps)
        XCTAssertEqual(resolved.guidance, ResolvedRequest.defaultGuidance)
        XCTAssertEqual(resolved.expandedPrompt, "x")
        XCTAssertNil(resolved.strength)
        XCTAssertEqual(resolved.scheduler, .euler, "the contract's default")
        XCTAssertNil(resolved.negativePrompt, "no negative prompt is nil (zero embeddings), not \"\"")
        #if os(iOS)
        XCTAssertEqual(resolved.computeUnits, .cpuAndNeuralEngine)
        XCTAssertTrue(resolved.lowMemory)
        #else
        XCTAssertEqual(resolved.computeUnits, .all)
        XCTAssertFalse(resolved.lowMemory)
        #endif
    }

    func testAPresetWithoutNegativePromptMeansNone() throws {
        var request = GenerationRequest(prompt: "a red circle")
        request.domain = "poster-style"          // its negative_prompt is ""
        XCTAssertNil(try request.resolve(catalog: catalog).negativePrompt)
        request.negativePrompt = ""
        XCTAssertEqual(try request.resolve(catalog: catalog).negativePrompt, "", "an explicit empty prompt stays")
    }

    func testMaskAndControlNetInputs() throws {
        var inpaint = GenerationRequest(prompt: "x")
        inpaint.imagePath = "a.png"
        inpaint.maskPath = "m.png"
        XCTAssertEqual(try inpaint.resolve(catalog: nil).strength, ResolvedRequest.defaultMaskStrength)
        let manifest = BundleManifest(tree: try JSONValue.parse(Data(#"{"components": {"controlnet/Edges": {"stage": "denoise"}}}"#.utf8)))
        var control = GenerationRequest(prompt: "x")
        control.sketchPath = "s.png"
        control.controlNet = "Edges"
        control.controlScale = 0.5
        let resolved = try control.resolve(catalog: nil, manifest: manifest)
        XCTAssertEqual(resolved.controlNet, "Edges")
        XCTAssertEqual(resolved.controlScale, 0.5)
        XCTAssertNil(resolved.strength, "with a ControlNet the sketch steers it; the run starts from noise")
        control.controlNet = "Depth"
        XCTAssertThrowsError(try control.resolve(catalog: nil, manifest: manifest)) { error in
            XCTAssertTrue(String(describing: error).contains("it has: Edges"), "\(error)")
        }
    }

    func testStrengthDefaultsDependOnTheInputKind() throws {
        var image = GenerationRequest(prompt: "x")
        image.imagePath = "a.png"
        XCTAssertEqual(try image.resolve(catalog: nil).strength, ResolvedRequest.defaultImageStrength)
        var sketch = GenerationRequest(prompt: "x")
        sketch.sketchPath = "s.png"
        XCTAssertEqual(try sketch.resolve(catalog: nil).strength, ResolvedRequest.defaultSketchStrength)
    }

    func testBadValuesAreRefused() {
        func refuses(_ change: (inout GenerationRequest) -> Void, _ fragment: String, line: UInt = #line) {
            var request = GenerationRequest(prompt: "x")
            change(&request)
            XCTAssertThrowsError(try request.resolve(catalog: catalog), line: line) { error in
                XCTAssertTrue(String(describing: error).contains(fragment), "\(error)", line: line)
            }
        }
        refuses({ $0.prompt = "   " }, "prompt is empty")
        refuses({ $0.steps = 0 }, "--steps")
        refuses({ $0.guidance = -1 }, "--guidance")
        refuses({ $0.strength = 0.5 }, "needs --image")
        refuses({ $0.imagePath = "a"; $0.strength = 1.5 }, "(0, 1]")
        refuses({ $0.imagePath = "a"; $0.sketchPath = "b" }, "not both")
        refuses({ $0.imagePath = "a"; $0.strength = 0.01; $0.steps = 10 }, "leaves no step")
        refuses({ $0.domain = "nope" }, "unknown domain")
        refuses({ $0.scheduler = "lms" }, "unknown scheduler")
        refuses({ $0.scheduler = "pndm" }, "euler, dpmpp2m, ddim")
        refuses({ $0.maskPath = "m.png" }, "--mask needs --image")
        refuses({ $0.controlNet = "Edges" }, "needs a control image")
        // the Python CLI's bounds and sentences (python/pocketsd/pipeline/options.py)
        refuses({ $0.controlNet = "Edges"; $0.sketchPath = "s"; $0.controlScale = 10.5 }, "--controlnet-scale must be between 0 and 10.0")
        refuses({ $0.sketchPath = "s"; $0.controlScale = 0.5 }, "only apply with --controlnet")
        refuses({ $0.sketchPath = "s"; $0.controlGuidanceEnd = 0.5 }, "only apply with --controlnet")
        refuses({ $0.controlNet = "Edges"; $0.sketchPath = "s"; $0.controlGuidanceStart = -0.1 }, "--control-guidance-start must be between 0.0 and 1.0")
        refuses({ $0.controlNet = "Edges"; $0.sketchPath = "s"; $0.controlGuidanceStart = 0.6; $0.controlGuidanceEnd = 0.6 },
                "must be below --control-guidance-end")
        refuses({ $0.controlNet = "Edges"; $0.sketchPath = "s"; $0.strength = 0.5 }, "does not apply with --controlnet")
        refuses({ $0.controlNet = "Edges"; $0.imagePath = "a"; $0.maskPath = "m" }, "one or the other")
    }

    func testManifestChecksSizeAndPicksTheLoraFunction() throws {
        let manifest = BundleManifest(tree: try JSONValue.parse(Data(#"{"size": [128, 128], "unet_functions": ["base", "poster", "blueprint"]}"#.utf8)))
        var request = GenerationRequest(prompt: "a red circle")
        request.domain = "poster-style"
        let styled = try request.resolve(catalog: catalog, manifest: manifest)
        XCTAssertEqual(styled.unetFunction, "poster")
        XCTAssertEqual(styled.lora, DomainPreset.LoRA(file: "poster.safetensors", scale: 0.8))

        request.domain = "logo"
        XCTAssertEqual(try request.resolve(catalog: catalog, manifest: manifest).unetFunction, "base")

        request.unetFunction = "sepia"
        XCTAssertThrowsError(try request.resolve(catalog: catalog, manifest: manifest)) { error in
            XCTAssertTrue(String(describing: error).contains("base, poster, blueprint"), "\(error)")
        }
        request.unetFunction = nil
        request.size = (256, 256)
        XCTAssertThrowsError(try request.resolve(catalog: catalog, manifest: manifest)) { error in
            XCTAssertTrue(String(describing: error).contains("converted for 128x128"), "\(error)")
        }
    }

    func testLoraDomainOnAPlainBundleSaysTheStyleMustBeBakedIn() throws {
        let manifest = BundleManifest(tree: .object(["size": .array([.integer(128), .integer(128)])]))
        var request = GenerationRequest(prompt: "a red circle")
        request.domain = "poster-style"
        let resolved = try request.resolve(catalog: catalog, manifest: manifest)
        XCTAssertNil(resolved.unetFunction)
        XCTAssertTrue(resolved.notes.contains { $0.contains("not multifunction") }, "\(resolved.notes)")
    }
}
