import Foundation

/// The shapes and names the loop needs, read from the manifest without loading any model.
///
/// Apple's pipeline asks the loaded UNet for its input shapes before it encodes the prompt, which loads the whole
/// UNet next to the text encoders. PocketSD's manifest lists every input shape, so nothing has to be loaded to
/// know them; a bundle without those lists gets Apple's SDXL layout, named in `assumptions`.
public struct LoopGeometry: Equatable, Sendable {
    public var family: String
    public var imageHeight: Int
    public var imageWidth: Int
    public var latentChannels: Int
    /// The UNet's `sample` channels: `latentChannels`, or 2·C + 1 for an inpainting UNet (latents, mask, and the
    /// masked image's latents).
    public var unetInChannels: Int
    public var latentHeight: Int
    public var latentWidth: Int
    /// The UNet takes `encoder_hidden_states` as (B, D, 1, 77) (Apple's Neural Engine layout) rather than (B, 77, D).
    public var hiddenStatesChannelsFirst: Bool
    public var scalingFactor: Float
    public var shiftFactor: Float?
    public var forceZerosForEmptyPrompt: Bool
    public var decoderInput: String
    public var encoderInput: String
    public var assumptions: [String]

    public init(family: String, imageHeight: Int, imageWidth: Int, latentChannels: Int = 4, unetInChannels: Int? = nil,
                hiddenStatesChannelsFirst: Bool = true,
                scalingFactor: Float, shiftFactor: Float? = nil, forceZerosForEmptyPrompt: Bool,
                decoderInput: String = "z", encoderInput: String = "x", assumptions: [String] = []) {
        self.family = family
        self.imageHeight = imageHeight
        self.imageWidth = imageWidth
        self.latentChannels = latentChannels
        self.unetInChannels = unetInChannels ?? latentChannels
        self.latentHeight = imageHeight / 8
        self.latentWidth = imageWidth / 8
        self.hiddenStatesChannelsFirst = hiddenStatesChannelsFirst
        self.scalingFactor = scalingFactor
        self.shiftFactor = shiftFactor
        self.forceZerosForEmptyPrompt = forceZerosForEmptyPrompt
        self.decoderInput = decoderInput
        self.encoderInput = encoderInput
        self.assumptions = assumptions
    }

    public init(manifest: BundleManifest, unetComponents: [String]) {
        var assumed: [String] = []
        let unet = unetComponents.compactMap { manifest.component($0) }.first { $0.input("sample") != nil }
        let sample = unet?.input("sample")?.shape
        let hidden = unetComponents.compactMap { manifest.component($0)?.input("encoder_hidden_states") }.first
        if hidden == nil { assumed.append("UNet takes encoder_hidden_states as (B, D, 1, 77) (Apple's layout)") }
        let decoder = manifest.component(BundleLayout.decoder)?.inputs.first?.name
        let encoder = manifest.component(BundleLayout.encoder)?.inputs.first?.name
        // The latents' channels are the VAE decoder's input; the UNet's sample may have more (an inpainting UNet).
        let unetIn = sample.map { $0.count == 4 ? $0[1] : 4 } ?? 4
        let decoderIn = manifest.component(BundleLayout.decoder)?.inputs.first?.shape
        let latent = decoderIn.flatMap { $0.count == 4 ? $0[1] : nil } ?? (unetIn == 9 ? 4 : unetIn)
        self.init(family: manifest.family, imageHeight: manifest.imageSize.height, imageWidth: manifest.imageSize.width,
                  latentChannels: latent, unetInChannels: unetIn,
                  hiddenStatesChannelsFirst: hidden.map { $0.shape.count == 4 } ?? true,
                  scalingFactor: Float(manifest.vaeScalingFactor), shiftFactor: manifest.vaeShiftFactor.map(Float.init),
                  forceZerosForEmptyPrompt: manifest.forceZerosForEmptyPrompt,
                  decoderInput: decoder ?? "z", encoderInput: encoder ?? "x", assumptions: assumed)
        latentHeight = manifest.latentSize.height
        latentWidth = manifest.latentSize.width
    }

    public var latentShape: [Int] { [1, latentChannels, latentHeight, latentWidth] }
}

/// PocketSD's own text → image loop over a bundle's models, in the order of the manifest's memory plan.
///
/// It is the Python CLI's loop (python/pocketsd/pipeline/generate.py) step for step — the same random draws in the
/// same order (`TorchRandom`), the same schedulers (`Schedulers.swift`), the same guidance and micro-conditioning —
/// so a seed gives the Python side's image; Tests/…/LoopParityTests hold it to numbers the Python loop produced.
/// Beyond the Python loop it does inpainting and takes ControlNet residuals from a Core ML ControlNet.
///
/// Memory (see `MemoryPlan`): with `lowMemory` each stage loads its models and unloads them before the next stage;
/// the two text encoders take turns, and nothing stays loaded after a run, also when it is cancelled or fails.
/// Without it the models stay loaded between runs (they are unloaded after a failure, which may have left them in
/// an unknown state, but not after a cancelled run; a cancelled prewarm unloads what it loaded).
public final class DiffusionLoop {
    public struct Models {
        public var textEncoders: [TextEncoderModel]
        public var unet: [TensorModel]
        public var vaeDecoder: TensorModel
        public var vaeEncoder: TensorModel?
        public var controlNets: [String: TensorModel]

        public init(textEncoders: [TextEncoderModel], unet: [TensorModel], vaeDecoder: TensorModel,
                    vaeEncoder: TensorModel? = nil, controlNets: [String: TensorModel] = [:]) {
            self.textEncoders = textEncoders
            self.unet = unet
            self.vaeDecoder = vaeDecoder
            self.vaeEncoder = vaeEncoder
            self.controlNets = controlNets
        }

        /// What prewarming loads, in the order a run meets them: the VAE encoder too when `withEncoder`
        /// (low memory compiles it up front; otherwise it is loaded the first time a run starts from an image).
        func prewarmed(withEncoder: Bool) -> [LoadableModel] {
            var list: [LoadableModel] = textEncoders
            if withEncoder, let vaeEncoder { list.append(vaeEncoder) }
            list += unet as [LoadableModel]
            list.append(vaeDecoder)
            return list
        }

        var all: [LoadableModel] {
            var list = prewarmed(withEncoder: true)
            list += controlNets.keys.sorted().compactMap { controlNets[$0] } as [LoadableModel]
            return list
        }
    }

    public struct Request: Sendable {
        public var prompt: String
        /// nil: no negative prompt (zero embeddings when the model says so); "" is an explicit empty prompt.
        public var negativePrompt: String?
        public var steps: Int
        public var guidance: Double
        public var seed: UInt32
        public var scheduler: SchedulerKind
        /// (1, 3, H, W) in [-1, 1]: image → image from `strength`.
        public var initImage: Tensor?
        public var strength: Double
        /// (1, 1, h, w) at latent size, 1 = repaint, 0 = keep (with `initImage`: inpainting).
        public var mask: Tensor?
        /// Inpainting: (1, 1, H, W) alpha at image size (`ImageTensors.InpaintMask.alpha`): what an inpainting
        /// UNet's masked image leaves out, and the paste-back's blend.
        public var maskAlpha: Tensor?
        /// After decoding, put the original back where `maskAlpha` is 0, blended where it is between.
        public var pasteBack: Bool
        /// A bundled ControlNet's name and its conditioning image (1, 3, H, W) in [0, 1].
        public var controlNet: String?
        public var controlImage: Tensor?
        public var controlScale: Float
        /// The share of the steps the ControlNet steers, [start, end] (diffusers' control_guidance_start/end).
        public var controlGuidanceStart: Double
        public var controlGuidanceEnd: Double

        public init(prompt: String, negativePrompt: String? = nil, steps: Int, guidance: Double, seed: UInt32,
                    scheduler: SchedulerKind, initImage: Tensor? = nil, strength: Double = 0.8, mask: Tensor? = nil,
                    maskAlpha: Tensor? = nil, pasteBack: Bool = true, controlNet: String? = nil, controlImage: Tensor? = nil, controlScale: Float = 1,
                    controlGuidanceStart: Double = 0, controlGuidanceEnd: Double = 1) {
            self.prompt = prompt
            self.negativePrompt = negativePrompt
            self.steps = steps
            self.guidance = guidance
            self.seed = seed
            self.scheduler = scheduler
            self.initImage = initImage
            self.strength = strength
            self.mask = mask
            self.maskAlpha = maskAlpha
            self.pasteBack = pasteBack
            self.controlNet = controlNet
            self.controlImage = controlImage
            self.controlScale = controlScale
            self.controlGuidanceStart = controlGuidanceStart
            self.controlGuidanceEnd = controlGuidanceEnd
        }
    }

    public struct StepProgress: Sendable {
        /// 1-based.
        public let step: Int
        public let stepCount: Int
        public let seconds: Double
        public let timestep: Double
    }

    public enum Event: Sendable {
        case stage(String)
        case model(ModelResidency.Event)
        case step(StepProgress)
    }

    public struct Output {
        /// Final latents, scaled as the scheduler leaves them.
        public let latents: Tensor
        /// (1, 3, H, W), roughly in [-1, 1].
        public let image: Tensor
        public let timesteps: [Double]
        public let warnings: [String]
    }

    public let models: Models
    public let geometry: LoopGeometry
    public let schedulerConfig: SchedulerConfig
    public let residency: ModelResidency
    public var lowMemory: Bool

    public init(models: Models, geometry: LoopGeometry, schedulerConfig: SchedulerConfig, residency: ModelResidency, lowMemory: Bool) {
        self.models = models
        self.geometry = geometry
        self.schedulerConfig = schedulerConfig
        self.residency = residency
        self.lowMemory = lowMemory
    }

    // MARK: loading

    /// Loads every model once, one at a time, so that the first (compiling) load of each happens before the first
    /// run and is timed apart. Low memory: each model is unloaded again right after (the OS keeps the compiled
    /// form); otherwise the models stay loaded for the runs to come. `shouldContinue` is asked between models: a
    /// load in progress cannot be interrupted, so a cancel takes effect when it ends.
    /// Returns the seconds spent loading.
    @discardableResult
    public func prewarm(timer: RunTimer? = nil, shouldContinue: () -> Bool = { true }) throws -> Double {
        var total = 0.0
        do {
            for model in models.prewarmed(withEncoder: lowMemory) {
                guard shouldContinue() else { throw CancellationError() }
                let seconds = try residency.load(model)
                total += seconds
                if lowMemory { residency.unload(model) }
            }
        } catch {
            // Unloaded in both modes, cancel included: the caller (PocketSDEngine.prepare) throws a half-prewarmed
            // loop away, and names left in the shared residency would make the next loop skip loading them (an
            // untimed load later, and a pre-flight that counts them as resident).
            unloadAll()
            timer?.add("load", seconds: total)
            throw error
        }
        timer?.add("load", seconds: total)
        return total
    }

    public func unloadAll() {
        for model in models.all { residency.unload(model) }
    }

    // MARK: the run

    public func run(_ request: Request, timer: RunTimer, observe: (Event) -> Void = { _ in },
                    shouldContinue: () -> Bool = { true }) throws -> Output {
        do {
            let output = try runStages(request, timer: timer, observe: observe, shouldContinue: shouldContinue)
            if lowMemory { unloadAll() }
            return output
        } catch {
            if lowMemory || !(error is CancellationError) { unloadAll() }
            throw error
        }
    }

    private func load(_ model: LoadableModel, timer: RunTimer) throws {
        timer.add("load", seconds: try residency.load(model))
    }

    private func release(_ model: LoadableModel) {
        if lowMemory { residency.unload(model) }
    }

    private func runStages(_ request: Request, timer: RunTimer, observe: (Event) -> Void,
                           shouldContinue: () -> Bool) throws -> Output {
        try validate(request)
        func checkpoint() throws { if !shouldContinue() { throw CancellationError() } }
        var warnings: [String] = []
        let doGuidance = request.guidance > 1.0

        // ---- text_encode: each encoder loads, encodes the prompt (and the negative prompt), and unloads.
        observe(.stage("text_encode"))
        try checkpoint()
        let encodeNegative = doGuidance && !(request.negativePrompt == nil && geometry.forceZerosForEmptyPrompt)
        var promptHidden: [Tensor] = [], negativeHidden: [Tensor] = []
        var promptPooled: Tensor?, negativePooled: Tensor?
        for (index, encoder) in models.textEncoders.enumerated() {
            try load(encoder, timer: timer)
            try timer.time("text_encode") {
                let prompt = try encoder.encode(request.prompt)
                promptHidden.append(prompt.hidden)
                if index == 0, let dropped = prompt.droppedWords {
                    warnings.append("prompt is longer than 77 tokens; these words are dropped: \"\(dropped)\"")
                }
                if let pooled = prompt.pooled, geometry.family == "sdxl", index == models.textEncoders.count - 1 { promptPooled = pooled }
                if encodeNegative {
                    let negative = try encoder.encode(request.negativePrompt ?? "")
                    negativeHidden.append(negative.hidden)
                    if let pooled = negative.pooled, geometry.family == "sdxl", index == models.textEncoders.count - 1 { negativePooled = pooled }
                }
            }
            release(encoder)
            try checkpoint()
        }
        var hidden = Tensor.concatenatingLastAxis(promptHidden)
        var pooled = promptPooled
        if doGuidance {
            let negative = encodeNegative ? Tensor.concatenatingLastAxis(negativeHidden) : .zeros(hidden.shape)
            hidden = .concatenating([negative, hidden])
            if let p = pooled {
                pooled = .concatenating([encodeNegative ? (negativePooled ?? .zeros(p.shape)) : .zeros(p.shape), p])
            }
        }
        if geometry.family == "sdxl" && pooled == nil {
            throw PocketSDError.badInput("the bundle's second text encoder gives no pooled output (pooled_outputs); re-convert the bundle")
        }
        try Self.checkFinite(hidden, "text encoding")
        if let pooled { try Self.checkFinite(pooled, "text encoding") }

        // ---- the starting latents (and, for image → image, vae_encode)
        let scheduler = request.scheduler.make(config: schedulerConfig, steps: request.steps)
        var random = TorchRandom(seed: UInt64(request.seed))
        var begin = 0
        var latents: Tensor
        var imageLatents: Tensor?
        var noise: Tensor?
        var inpaintChannels: Tensor?
        if let image = request.initImage {
            let initSteps = min(Int(Double(request.steps) * request.strength), request.steps)
            begin = max(request.steps - initSteps, 0)
            observe(.stage("vae_encode"))
            // Inpainting at strength 1 starts from pure noise, as diffusers' inpaint pipeline and the Python loop
            // do. The draws keep the Python loop's order: the image's latents (a plain UNet blends them back in,
            // and a start below 1 noises them), the noise, then an inpainting UNet's masked image.
            let fromNoise = request.mask != nil && request.strength >= 1
            let inpaintUNet = geometry.unetInChannels != geometry.latentChannels
            let encoded: Tensor? = try fromNoise && inpaintUNet ? nil : encodeImage(image, random: &random, timer: timer)
            let drawn = random.normal(geometry.latentShape)
            latents = fromNoise || encoded == nil
                ? drawn.map { $0 * scheduler.initNoiseSigma } : scheduler.addNoise(encoded!, noise: drawn, stepIndex: begin)
            imageLatents = inpaintUNet ? nil : encoded
            noise = drawn
            if inpaintUNet, let mask = request.mask, let alpha = request.maskAlpha {
                // Repainted pixels blanked (0 is mid-gray in [-1, 1]) wherever the feathered mask reaches.
                let masked = Self.blank(image, where: alpha)
                let maskedLatents = try encodeImage(masked, random: &random, timer: timer)
                inpaintChannels = .concatenatingChannels([mask, maskedLatents])
            }
            try checkpoint()
        } else {
            latents = random.normal(geometry.latentShape).map { $0 * scheduler.initNoiseSigma }
        }
        let timesteps = Array(scheduler.timesteps[begin...])

        // ---- denoise
        observe(.stage("denoise"))
        let controlNet = try request.controlNet.map { name -> TensorModel in
            guard let model = models.controlNets[name] else {
                throw PocketSDError.badInput("the bundle has no ControlNet \"\(name)\"; it has: \(models.controlNets.keys.sorted().joined(separator: ", "))")
            }
            return model
        }
        if let controlNet { try load(controlNet, timer: timer) }
        for chunk in models.unet { try load(chunk, timer: timer) }
        let batch = doGuidance ? 2 : 1
        var conditioning: [String: Tensor] = [
            "encoder_hidden_states": geometry.hiddenStatesChannelsFirst ? hidden.toChannelsFirstSequence() : hidden,
        ]
        if geometry.family == "sdxl", let pooled {
            let h = Float(geometry.imageHeight), w = Float(geometry.imageWidth)
            // micro-conditioning: original size, crop top-left (0, 0), target size
            let ids = Tensor(shape: [1, 6], scalars: [h, w, 0, 0, h, w])
            conditioning["text_embeds"] = pooled
            conditioning["time_ids"] = .concatenating(Array(repeating: ids, count: batch))
        }
        if let control = request.controlImage {
            conditioning["controlnet_cond"] = .concatenating(Array(repeating: control, count: batch))
        }
        // A UNet converted to take ControlNet residuals needs them on every call: zeros when no ControlNet is used,
        // and at the steps outside the ControlNet's share of the schedule.
        var zeroResiduals: [String: Tensor] = [:]
        for spec in models.unet.flatMap(\.inputSpecs) where Self.isResidual(spec.name) && spec.shape.count > 1 {
            zeroResiduals[spec.name] = .zeros([batch] + spec.shape.dropFirst())
        }
        if controlNet == nil { conditioning.merge(zeroResiduals) { _, zero in zero } }
        let mask = request.mask
        for (i, t) in timesteps.enumerated() {
            let stepIndex = begin + i
            let t0 = timer.clock()
            var modelIn = doGuidance ? Tensor.concatenating([latents, latents]) : latents
            modelIn = scheduler.scaleModelInput(modelIn, stepIndex: stepIndex)
            var feeds = conditioning
            if let inpaintChannels {
                modelIn = .concatenatingChannels([modelIn, .concatenating(Array(repeating: inpaintChannels, count: modelIn.batch))])
            }
            feeds["sample"] = modelIn
            feeds["timestep"] = Tensor(shape: [batch], repeating: Float(t))
            if controlNet != nil, !Self.controlActive(step: i, of: timesteps.count, start: request.controlGuidanceStart,
                                                      end: request.controlGuidanceEnd) {
                feeds.merge(zeroResiduals) { _, zero in zero }
            } else if let controlNet {
                let residuals = try BatchedPrediction.run([controlNet], feeds: feeds)
                let knownInputs = Set(models.unet.flatMap(\.inputSpecs).map(\.name))
                if !knownInputs.isEmpty && residuals.keys.allSatisfy({ !knownInputs.contains($0) }) {
                    throw PocketSDError.badInput(
                        "the bundle's UNet takes no ControlNet residuals (\(residuals.keys.sorted().prefix(2).joined(separator: ", ")) …); re-convert it with its ControlNet")
                }
                for (name, value) in residuals { feeds[name] = request.controlScale == 1 ? value : request.controlScale * value }
            }
            let out = try BatchedPrediction.run(models.unet, feeds: feeds)
            var prediction = try BatchedPrediction.pick(out, ["noise_pred"], rank: 4, model: models.unet.last?.name ?? "Unet")
            if doGuidance {
                let uncond = prediction.rows(0..<1), text = prediction.rows(1..<2)
                let g = Float(request.guidance)
                prediction = Tensor(shape: uncond.shape, scalars: zip(uncond.scalars, text.scalars).map { $0 + g * ($1 - $0) })
            }
            latents = scheduler.step(prediction, stepIndex: stepIndex, sample: latents)
            if let mask, let original = imageLatents, let noise {
                // Inpainting with a plain UNet: outside the mask, put back the original noised to the next step's level.
                let kept = i < timesteps.count - 1 ? scheduler.addNoise(original, noise: noise, stepIndex: stepIndex + 1) : original
                latents = Self.blend(kept: kept, painted: latents, mask: mask)
            }
            try Self.checkFinite(latents, "the UNet (denoising step \(i + 1) of \(timesteps.count))")
            let seconds = timer.clock() - t0
            timer.step(seconds)
            observe(.step(StepProgress(step: i + 1, stepCount: timesteps.count, seconds: seconds, timestep: t)))
            try checkpoint()
        }
        for chunk in models.unet { release(chunk) }
        if let controlNet { release(controlNet) }

        // ---- vae_decode
        observe(.stage("vae_decode"))
        try load(models.vaeDecoder, timer: timer)
        let image = try timer.time("vae_decode") { () -> Tensor in
            var z = latents.map { $0 / geometry.scalingFactor }
            if let shift = geometry.shiftFactor { z = z.map { $0 + shift } }
            let out = try BatchedPrediction.run([models.vaeDecoder], feeds: [geometry.decoderInput: z], batchInput: geometry.decoderInput)
            return try BatchedPrediction.pick(out, ["image"], rank: 4, model: models.vaeDecoder.name)
        }
        release(models.vaeDecoder)
        try Self.checkFinite(image, "the VAE decoder")
        var output = image
        if request.pasteBack, let alpha = request.maskAlpha, let original = request.initImage {
            output = ImageTensors.pasteBack(decoded: image, original: original, alpha: alpha)
        }
        return Output(latents: latents, image: output, timesteps: timesteps, warnings: warnings)
    }

    /// The VAE encoder's moments → a sample from them with the run's generator, shifted and scaled
    /// (diffusers' DiagonalGaussianDistribution).
    private func encodeImage(_ image: Tensor, random: inout TorchRandom, timer: RunTimer) throws -> Tensor {
        guard let encoder = models.vaeEncoder else {
            throw PocketSDError.badInput("this bundle has no VAEEncoder, so no image → image; re-run `pocketsd convert` (it writes VAEEncoder)")
        }
        try load(encoder, timer: timer)
        let moments = try timer.time("vae_encode") { () -> Tensor in
            let out = try BatchedPrediction.run([encoder], feeds: [geometry.encoderInput: image], batchInput: geometry.encoderInput)
            return try BatchedPrediction.pick(out, ["latent", "latent_dist", "moments"], rank: 4, model: encoder.name)
        }
        release(encoder)
        try Self.checkFinite(moments, "the VAE encoder")
        let c = geometry.latentChannels
        let plane = moments.count / max(moments.shape.count == 4 ? moments.shape[1] : 1, 1)
        let mean = Array(moments.scalars[0..<(c * plane)])
        // An encoder exported with the mean only: a (near) zero variance makes the sample the mean.
        let logvar = moments.shape[1] >= 2 * c ? Array(moments.scalars[(c * plane)..<(2 * c * plane)]) : [Float](repeating: -30, count: c * plane)
        let shape = [1, c, moments.shape[2], moments.shape[3]]
        let eps = random.normal(shape)
        var sample = [Float](repeating: 0, count: c * plane)
        for i in 0..<sample.count {
            let std = Float(exp(0.5 * Double(min(max(logvar[i], -30), 20))))
            var value = mean[i] + std * eps.scalars[i]
            if let shift = geometry.shiftFactor { value -= shift }
            sample[i] = value * geometry.scalingFactor
        }
        return Tensor(shape: shape, scalars: sample)
    }

    /// NaN or ±inf from a model (an fp16 overflow: SDXL's own VAE is known for it) would become a black image, and
    /// `UInt8(NaN)` traps: stop with one line naming the stage, as the Python CLI's `check_finite` does.
    public static func checkFinite(_ tensor: Tensor, _ stage: String) throws {
        guard tensor.scalars.allSatisfy(\.isFinite) else {
            throw PocketSDError.badInput(
                "\(stage) produced NaN/inf values; nothing was written (an fp16 overflow in the bundle's models, such as SDXL's own VAE: convert with the fp16-safe VAE, see swift-app/README.md)")
        }
    }

    /// Whether step `step` (0-based) of `count` is inside the ControlNet's [start, end] share of the schedule:
    /// diffusers' rule, and the Python loop's `control_active`.
    public static func controlActive(step: Int, of count: Int, start: Double, end: Double) -> Bool {
        !(Double(step) / Double(count) < start || Double(step + 1) / Double(count) > end)
    }

    /// Names a UNet gives its ControlNet residual inputs (diffusers' `down_block_additional_residuals` /
    /// `mid_block_additional_residual`, Apple's `down_block_res_samples_NN` / `mid_block_res_sample`).
    static func isResidual(_ name: String) -> Bool {
        name.contains("res_sample") || name.contains("additional_residual")
    }

    /// The image with every pixel the mask touches (alpha > 0) set to 0, the mask (1, 1, H, W) shared by the channels.
    static func blank(_ image: Tensor, where alpha: Tensor) -> Tensor {
        let plane = alpha.count
        var out = image.scalars
        for i in 0..<out.count where alpha.scalars[i % plane] > 0 { out[i] = 0 }
        return Tensor(shape: image.shape, scalars: out)
    }

    /// (1 − mask)·kept + mask·painted, the mask (1, 1, h, w) shared by every channel.
    static func blend(kept: Tensor, painted: Tensor, mask: Tensor) -> Tensor {
        let plane = mask.count
        var out = painted.scalars
        for i in 0..<out.count {
            let m = mask.scalars[i % plane]
            out[i] = (1 - m) * kept.scalars[i] + m * painted.scalars[i]
        }
        return Tensor(shape: painted.shape, scalars: out)
    }

    private func validate(_ request: Request) throws {
        if request.steps < 1 { throw PocketSDError.badInput("--steps must be at least 1") }
        if models.textEncoders.isEmpty { throw PocketSDError.badInput("the bundle has no text encoder") }
        if geometry.family == "sdxl" && models.textEncoders.count != 2 {
            throw PocketSDError.badInput("an SDXL bundle needs TextEncoder and TextEncoder2; re-run `pocketsd convert`")
        }
        if let image = request.initImage, image.shape != [1, 3, geometry.imageHeight, geometry.imageWidth] {
            throw PocketSDError.badInput("the starting image is \(image.shape), the bundle takes [1, 3, \(geometry.imageHeight), \(geometry.imageWidth)]")
        }
        if request.mask != nil && request.initImage == nil {
            throw PocketSDError.badInput("a mask needs an image to repaint (--image with --mask)")
        }
        if let mask = request.mask, mask.shape != [1, 1, geometry.latentHeight, geometry.latentWidth] {
            throw PocketSDError.badInput("the mask is \(mask.shape) at latent size, the bundle's latents are \(geometry.latentHeight)×\(geometry.latentWidth)")
        }
        if let alpha = request.maskAlpha, request.mask == nil || alpha.shape != [1, 1, geometry.imageHeight, geometry.imageWidth] {
            throw PocketSDError.badInput("the inpainting mask at image size must be [1, 1, \(geometry.imageHeight), \(geometry.imageWidth)]")
        }
        if geometry.unetInChannels != geometry.latentChannels {
            // The Python loop's sentences (pocketsd/pipeline/generate.py, _check_unet_channels).
            guard geometry.unetInChannels == 2 * geometry.latentChannels + 1 else {
                throw PocketSDError.badInput("the UNet takes \(geometry.unetInChannels) input channels, the VAE makes \(geometry.latentChannels)-channel latents: only plain (\(geometry.latentChannels)) and inpainting (\(2 * geometry.latentChannels + 1)) UNets are supported")
            }
            guard request.mask != nil, request.maskAlpha != nil else {
                throw PocketSDError.badInput("this model's UNet is an inpainting UNet (\(geometry.unetInChannels) input channels: latents, mask and masked-image latents); give --image FILE --mask FILE")
            }
        }
        if request.controlNet != nil && request.controlImage == nil {
            throw PocketSDError.badInput("a ControlNet needs a control image (--sketch or --control-image)")
        }
        if request.initImage != nil, Int(Double(request.steps) * request.strength) < 1 {
            throw PocketSDError.badInput("--strength \(request.strength) with \(request.steps) steps leaves no step to run; raise either")
        }
    }
}
