import Foundation
@testable import PocketSDKit

// Stand-ins for a bundle's networks: closed-form functions, the same as the fake backend in
// swift-app/scripts/make_fixtures.py (a change to one must be made to the other), plus a log of every
// load, unload and prediction so tests can check what was resident when.

final class CallLog {
    private(set) var events: [String] = []
    private(set) var resident: [String] = []
    /// The resident set after every load.
    private(set) var residentAfterLoads: [[String]] = []

    func load(_ name: String) {
        events.append("load \(name)")
        resident.append(name)
        residentAfterLoads.append(resident)
    }

    func unload(_ name: String) {
        events.append("unload \(name)")
        resident.removeAll { $0 == name }
    }

    func predict(_ name: String) throws {
        events.append("predict \(name)")
        guard resident.contains(name) else { throw FakeError.notLoaded(name) }
    }

    func count(_ prefix: String) -> Int { events.filter { $0.hasPrefix(prefix) }.count }
}

enum FakeError: Error, Equatable {
    case notLoaded(String)
    case boom
}

enum Fake {
    static let bos = 49406, eos = 49407, pad = 0
    static let hiddenWidths = [4, 6]
    static let pooledWidth = 3

    static func tokenIDs(_ text: String, length: Int = 77) -> [Int] {
        // Python's ord(c) % 1000 over code points.
        let body = text.unicodeScalars.map { Int($0.value) % 1000 }.prefix(length - 2)
        let ids = [bos] + body + [eos]
        return ids + Array(repeating: pad, count: length - ids.count)
    }
}

class FakeModel: LoadableModel {
    let name: String
    let log: CallLog
    var failOnLoad = false

    init(name: String, log: CallLog) {
        self.name = name
        self.log = log
    }

    func load() throws {
        if failOnLoad { throw FakeError.boom }
        log.load(name)
    }

    func unload() { log.unload(name) }
}

final class FakeTextEncoder: FakeModel, TextEncoderModel {
    let index: Int

    init(index: Int, log: CallLog) {
        self.index = index
        super.init(name: index == 0 ? "TextEncoder" : "TextEncoder2", log: log)
    }

    func encode(_ text: String) throws -> TextEncoding {
        try log.predict(name)
        let ids = Fake.tokenIDs(text)
        let width = Fake.hiddenWidths[index]
        var hidden: [Float] = []
        for id in ids {
            for d in 0..<width { hidden.append(Float(sin(0.01 * Double(id) * Double(d + 1) + 0.5 * Double(index)))) }
        }
        let sum = Double(ids.reduce(0, +))
        let pooled = index == 1 ? Tensor(shape: [1, Fake.pooledWidth], scalars: (0..<Fake.pooledWidth).map { Float(cos(0.001 * sum + Double($0))) }) : nil
        return TextEncoding(hidden: Tensor(shape: [1, ids.count, width], scalars: hidden), pooled: pooled)
    }
}

/// The UNet as one model or as two chunks that chain (chunk 1 → "partial", chunk 2 adds the conditioning).
final class FakeUNet: FakeModel, TensorModel {
    enum Part { case whole, first, second }
    let part: Part
    var inputSpecs: [TensorSpec]
    var failAtCall: Int?
    /// From this call on, the prediction holds a NaN (an fp16 overflow inside the network).
    var nanAtCall: Int?
    private(set) var calls = 0
    private(set) var lastInputs: [String: Tensor] = [:]

    init(name: String = "Unet", part: Part = .whole, batch: Int = 2, latent: [Int] = [4, 3, 5], flatTimeIds: Bool = false,
         sdxl: Bool = true, controlInputs: Bool = false, log: CallLog) {
        self.part = part
        let c = latent[0], h = latent[1], w = latent[2]
        var specs = [TensorSpec(name: "sample", shape: [batch, c, h, w]), TensorSpec(name: "timestep", shape: [batch]),
                     TensorSpec(name: "encoder_hidden_states", shape: [batch, 10, 1, 77])]
        if sdxl {
            specs.append(TensorSpec(name: "text_embeds", shape: [batch, Fake.pooledWidth]))
            specs.append(TensorSpec(name: "time_ids", shape: flatTimeIds ? [batch * 6] : [batch, 6]))
        }
        if part == .second { specs.append(TensorSpec(name: "partial", shape: [batch, c, h, w])) }
        if controlInputs && part != .first { specs.append(TensorSpec(name: "mid_block_res_sample", shape: [batch, c, h, w])) }
        inputSpecs = specs
        super.init(name: name, log: log)
    }

    func predict(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        try log.predict(name)
        calls += 1
        lastInputs = inputs
        if let failAtCall, calls >= failAtCall { throw FakeError.boom }
        var sample = inputs["sample"]!
        if sample.shape[1] == 9 {
            // An inpainting UNet: 0.1·latents + 0.05·mask + 0.02·masked latents, then as a plain UNet
            // (make_fixtures.FakeInpaintBackend, the same operations in the same order).
            let n = sample.batch, plane = sample.shape[2] * sample.shape[3]
            var mixed = [Float](repeating: 0, count: n * 4 * plane)
            for b in 0..<n {
                let base = b * 9 * plane
                for c in 0..<4 {
                    for p in 0..<plane {
                        let x = sample.scalars[base + c * plane + p], m = sample.scalars[base + 4 * plane + p]
                        let masked = sample.scalars[base + (5 + c) * plane + p]
                        mixed[(b * 4 + c) * plane + p] = ((Float(0.1) * x + Float(0.05) * m) + Float(0.02) * masked) / Float(0.1)
                    }
                }
            }
            sample = Tensor(shape: [n, 4, sample.shape[2], sample.shape[3]], scalars: mixed)
        }
        if part == .first { return ["partial": 0.1 * sample] }
        let partial = part == .second ? inputs["partial"]! : 0.1 * sample
        let b = sample.batch
        var out: [Tensor] = []
        for row in 0..<b {
            var shift = 0.0005 * Double(inputs["timestep"]!.scalars[row]) + 0.05 * Double(inputs["encoder_hidden_states"]!.rows(row..<(row + 1)).mean())
            if let pooled = inputs["text_embeds"] { shift += 0.02 * Double(pooled.rows(row..<(row + 1)).mean()) }
            if let ids = inputs["time_ids"] {
                let six = ids.reshaped([b, 6]).rows(row..<(row + 1))
                shift += 1e-5 * Double(six.scalars.reduce(0, +))
            }
            if let residual = inputs["mid_block_res_sample"] { shift += Double(residual.rows(row..<(row + 1)).mean()) }
            out.append(partial.rows(row..<(row + 1)).map { $0 + Float(shift) })
        }
        if let nanAtCall, calls >= nanAtCall { out[0] = out[0].map { _ in Float.nan } }
        return ["noise_pred": .concatenating(out)]
    }
}

final class FakeDecoder: FakeModel, TensorModel {
    var inputSpecs: [TensorSpec] = []
    /// One pixel comes out +inf (SDXL's fp16 VAE overflowing).
    var overflows = false

    init(log: CallLog) { super.init(name: "VAEDecoder", log: log) }

    func predict(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        try log.predict(name)
        let z = inputs["z"]!
        let h = z.shape[2], w = z.shape[3], H = 8 * h, W = 8 * w
        var out = [Float](repeating: 0, count: 3 * H * W)
        for c in 0..<3 {
            for y in 0..<H {
                for x in 0..<W {
                    let zi = z.scalars[(c * h + y / 8) * w + x / 8]
                    let z3 = z.scalars[(3 * h + y / 8) * w + x / 8]
                    out[(c * H + y) * W + x] = Float(tanh(Double(zi + 0.3 * z3)))
                }
            }
        }
        if overflows { out[out.count / 2] = .infinity }
        return ["image": Tensor(shape: [1, 3, H, W], scalars: out)]
    }
}

final class FakeEncoder: FakeModel, TensorModel {
    var inputSpecs: [TensorSpec] = []

    init(log: CallLog) { super.init(name: "VAEEncoder", log: log) }

    func predict(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        try log.predict(name)
        let x = inputs["x"]!
        let H = x.shape[2], W = x.shape[3], h = H / 8, w = W / 8
        var out = [Float](repeating: 0, count: 8 * h * w)
        for c in 0..<4 {
            for y in 0..<h {
                for xx in 0..<w {
                    var sum: Float = 0
                    for dy in 0..<8 { for dx in 0..<8 { sum += x.scalars[((c % 3) * H + 8 * y + dy) * W + 8 * xx + dx] } }
                    out[(c * h + y) * w + xx] = 0.5 * (sum / 64) + 0.1 * Float(c)
                    out[((4 + c) * h + y) * w + xx] = -1.0 - 0.2 * Float(c)
                }
            }
        }
        return ["latent": Tensor(shape: [1, 8, h, w], scalars: out)]
    }
}

/// A ControlNet whose one residual is the conditioning image's mean, scaled (the fake UNet adds residual means).
final class FakeControlNet: FakeModel, TensorModel {
    var inputSpecs: [TensorSpec] = []
    private(set) var lastCondition: Tensor?

    override init(name: String = "controlnet/Edges", log: CallLog) { super.init(name: name, log: log) }

    func predict(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        try log.predict(name)
        let sample = inputs["sample"]!
        let condition = inputs["controlnet_cond"]!
        lastCondition = condition
        return ["mid_block_res_sample": Tensor(shape: sample.shape, repeating: 0.1 * condition.mean())]
    }
}

/// A loop over the fakes at the fixtures' size (24×40 pixels, 3×5 latents).
struct FakeBundle {
    let log = CallLog()
    var chunked = false
    var unetBatch = 2
    var flatTimeIds = false
    var withEncoder = true
    var controlInputs = false
    var lowMemory = true
    var forceZeros = true
    /// A 9-channel inpainting UNet (latents, mask, masked-image latents).
    var inpaintUNet = false
    var weights: [String: Int] = ["TextEncoder": 100, "TextEncoder2": 300, "VAEEncoder": 50, "Unet": 1000,
                                  "UnetChunk1": 600, "UnetChunk2": 500, "VAEDecoder": 80, "controlnet/Edges": 200]

    func make() -> (loop: DiffusionLoop, unet: [FakeUNet], residency: ModelResidency) {
        let unet: [FakeUNet] = chunked
            ? [FakeUNet(name: "UnetChunk1", part: .first, batch: unetBatch, flatTimeIds: flatTimeIds, log: log),
               FakeUNet(name: "UnetChunk2", part: .second, batch: unetBatch, flatTimeIds: flatTimeIds, controlInputs: controlInputs, log: log)]
            : [FakeUNet(batch: unetBatch, latent: [inpaintUNet ? 9 : 4, 3, 5], flatTimeIds: flatTimeIds, controlInputs: controlInputs, log: log)]
        let models = DiffusionLoop.Models(
            textEncoders: [FakeTextEncoder(index: 0, log: log), FakeTextEncoder(index: 1, log: log)],
            unet: unet, vaeDecoder: FakeDecoder(log: log), vaeEncoder: withEncoder ? FakeEncoder(log: log) : nil,
            controlNets: ["Edges": FakeControlNet(log: log)])
        let geometry = LoopGeometry(family: "sdxl", imageHeight: 24, imageWidth: 40, unetInChannels: inpaintUNet ? 9 : 4,
                                    scalingFactor: 0.5, forceZerosForEmptyPrompt: forceZeros)
        let residency = ModelResidency(weightBytes: weights)
        let loop = DiffusionLoop(models: models, geometry: geometry, schedulerConfig: Fixtures.schedulerConfig,
                                 residency: residency, lowMemory: lowMemory)
        return (loop, unet, residency)
    }
}

/// The fixture image: ((x·7 + y·3 + c·11) mod 17) / 8 − 1, as make_fixtures.init_image draws it.
func fixtureInitImage(height: Int = 24, width: Int = 40) -> Tensor {
    var out: [Float] = []
    for c in 0..<3 {
        for y in 0..<height {
            for x in 0..<width { out.append(Float((x * 7 + y * 3 + c * 11) % 17) / 8 - 1) }
        }
    }
    return Tensor(shape: [1, 3, height, width], scalars: out)
}

enum Fixtures {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func load(_ name: String) throws -> JSONValue {
        try JSONValue.parse(Data(contentsOf: folder.appendingPathComponent(name + ".json")))
    }

    /// The reference model's scheduler config (what the fixtures were made with).
    static let schedulerConfig: SchedulerConfig = {
        let url = DomainPresetsTests.repoRoot.appendingPathComponent("python/pocketsd/data/reference/model/scheduler/scheduler_config.json")
        return try! SchedulerConfig(json: JSONValue.parse(Data(contentsOf: url)))
    }()
}
