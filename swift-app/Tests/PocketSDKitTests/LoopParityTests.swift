import XCTest
@testable import PocketSDKit

/// The Swift loop against numbers the Python side produced (scripts/make_fixtures.py): torch's random numbers,
/// diffusers' schedulers, and pocketsd's own loop over the same fake networks.
final class LoopParityTests: XCTestCase {
    func floats(_ value: JSONValue?) -> [Float] { (value?.array ?? []).map { Float($0.double ?? .nan) } }

    func testTorchRandomMatchesTorch() throws {
        let fixture = try Fixtures.load("rng")
        var compared = 0
        var worstSeen: Float = 0
        for case_ in fixture["cases"]!.array! {
            var random = TorchRandom(seed: UInt64(case_["seed"]!.int!))
            for (shape, values) in zip(case_["shapes"]!.array!, case_["values"]!.array!) {
                let expected = floats(values)
                let drawn = random.normal(shape.intArray!)
                XCTAssertEqual(drawn.count, expected.count)
                let worst = zip(drawn.scalars, expected).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(worst, 2e-6, "seed \(case_["seed"]!) shape \(shape)")
                worstSeen = max(worstSeen, worst)
                compared += expected.count
            }
        }
        XCTAssertGreaterThan(compared, 4500)
        print("torch.randn parity: \(compared) values, largest difference \(worstSeen)")
    }

    func testSchedulersMatchDiffusers() throws {
        let fixture = try Fixtures.load("schedulers")
        var checked = 0
        var worstSeen: Float = 0
        for case_ in fixture["cases"]!.array! {
            let spacing = case_["spacing"]!.string!
            guard case .object(var raw) = fixture["config"]! else { return XCTFail("config") }
            raw["timestep_spacing"] = .string(spacing)
            let config = try SchedulerConfig(json: .object(raw))
            let kind = SchedulerKind(rawValue: case_["scheduler"]!.string!)!
            let steps = case_["steps"]!.int!
            let label = "\(kind) \(spacing) \(steps) steps strength \(case_["strength"]!)"
            let scheduler = kind.make(config: config, steps: steps)
            XCTAssertEqual(scheduler.timesteps, floats(case_["timesteps"]).map(Double.init), label)
            if let sigmas = case_["sigmas"] {
                let mine: [Float]
                if let euler = scheduler as? EulerScheduler { mine = euler.sigmas } else { mine = (scheduler as! DPMSolverPlusPlus2MScheduler).sigmas }
                for (a, b) in zip(mine, floats(sigmas)) { XCTAssertEqual(a, b, accuracy: max(1e-6, abs(b) * 2e-6), label) }
            }
            XCTAssertEqual(scheduler.initNoiseSigma, Float(case_["init_noise_sigma"]!.double!), accuracy: 1e-4, label)

            let noise = Tensor(shape: [1, 4, 2, 2], scalars: floats(case_["noise"]))
            let begin = case_["begin_index"]!.int!
            var x: Tensor
            if case_["strength"]!.isNull {
                x = noise.map { $0 * scheduler.initNoiseSigma }
            } else {
                let original = Tensor(shape: [1, 4, 2, 2], scalars: (0..<16).map { -1 + 2 * Float($0) / 15 })
                x = scheduler.addNoise(original, noise: noise, stepIndex: begin)
            }
            XCTAssertLessThan(x.maxAbsDifference(Tensor(shape: x.shape, scalars: floats(case_["start"]))), 1e-4, label)
            for k in begin..<scheduler.timesteps.count {
                let modelIn = scheduler.scaleModelInput(x, stepIndex: k)
                let eps = modelIn.map { 0.1 * $0 + Float(0.0005 * scheduler.timesteps[k]) }
                x = scheduler.step(eps, stepIndex: k, sample: x)
            }
            let expected = Tensor(shape: x.shape, scalars: floats(case_["final"]))
            let scale = max(1, expected.scalars.map(abs).max() ?? 1)
            XCTAssertLessThan(x.maxAbsDifference(expected) / scale, 2e-5, label)
            worstSeen = max(worstSeen, x.maxAbsDifference(expected) / scale)
            checked += 1
        }
        XCTAssertGreaterThan(checked, 80)
        print("scheduler parity: \(checked) runs, largest relative difference \(worstSeen)")
    }

    /// Whole runs: text → image and image → image, CFG on and off, no negative prompt vs "" vs a prompt, all three
    /// schedulers. Final latents within float rounding of the Python loop's, and the same 8-bit pixels.
    func testLoopMatchesThePythonLoop() throws {
        let fixture = try Fixtures.load("loop")
        XCTAssertEqual(fixture["scaling_factor"]?.double, 0.5)
        var worstLatent: Float = 0
        var pixelsOff = 0
        for case_ in fixture["cases"]!.array! {
            var bundle = FakeBundle()
            bundle.forceZeros = case_["force_zeros"]!.bool!
            let (loop, _, _) = bundle.make()
            let strength = case_["strength"]?.double
            let request = DiffusionLoop.Request(
                prompt: case_["prompt"]!.string!, negativePrompt: case_["negative"]!.string,
                steps: case_["steps"]!.int!, guidance: case_["guidance"]!.double!, seed: UInt32(case_["seed"]!.int!),
                scheduler: SchedulerKind(rawValue: case_["scheduler"]!.string!)!,
                initImage: strength == nil ? nil : fixtureInitImage(), strength: strength ?? 0.8)
            let label = "\(request.scheduler) \(request.steps) steps guidance \(request.guidance) negative \(String(describing: request.negativePrompt)) strength \(String(describing: strength))"
            let output = try loop.run(request, timer: RunTimer())
            XCTAssertEqual(output.timesteps, floats(case_["timesteps"]).map(Double.init), label)
            let expected = Tensor(shape: output.latents.shape, scalars: floats(case_["latents"]))
            let scale = max(1, expected.scalars.map(abs).max() ?? 1)
            XCTAssertLessThan(output.latents.maxAbsDifference(expected) / scale, 1e-5, label)
            let pixels = try ImageTensors.rgb(output.image).pixels
            let reference = (case_["pixels"]!.array!).map { UInt8($0.int!) }
            XCTAssertEqual(pixels.count, reference.count, label)
            let off = zip(pixels, reference).filter { $0 != $1 }
            XCTAssertTrue(off.allSatisfy { abs(Int($0) - Int($1)) <= 1 }, "\(label): pixels differ by more than 1")
            XCTAssertLessThanOrEqual(off.count, pixels.count / 100, "\(label): \(off.count) pixels differ")
            worstLatent = max(worstLatent, output.latents.maxAbsDifference(expected) / scale)
            pixelsOff += off.count
        }
        print("loop parity: largest relative latent difference \(worstLatent), \(pixelsOff) 8-bit pixel values off by one")
    }

    /// (printed once the cases above ran)
    /// The Python loop's stage order (load text encoders, [VAE encoder], UNet, decoder, each unloaded in low-memory
    /// mode) is kept; the Swift loop only splits "text_encoder" into its two models.
    func testStageOrderFollowsThePythonLoop() throws {
        let fixture = try Fixtures.load("loop")
        let imageCase = fixture["cases"]!.array!.first { $0["strength"] != nil }!
        XCTAssertEqual(imageCase["events"]?.stringArray, ["load text_encoder", "unload text_encoder", "load vae_encoder",
                                                          "unload vae_encoder", "load unet", "unload unet", "load vae_decoder", "unload vae_decoder"])
        let bundle = FakeBundle()
        let (loop, _, _) = bundle.make()
        _ = try loop.run(DiffusionLoop.Request(prompt: "p", steps: 3, guidance: 5, seed: 1, scheduler: .euler,
                                               initImage: fixtureInitImage(), strength: 0.7), timer: RunTimer())
        let loads = bundle.log.events.filter { !$0.hasPrefix("predict") }
        XCTAssertEqual(loads, ["load TextEncoder", "unload TextEncoder", "load TextEncoder2", "unload TextEncoder2",
                               "load VAEEncoder", "unload VAEEncoder", "load Unet", "unload Unet", "load VAEDecoder", "unload VAEDecoder"])
    }
}
