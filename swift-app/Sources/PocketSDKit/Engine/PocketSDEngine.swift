#if canImport(CoreML) && canImport(StableDiffusion)
import CoreGraphics
import CoreML
import Foundation
import StableDiffusion

/// Runs a `pocketsd convert` bundle with Apple's `StableDiffusionXLPipeline`, timing every stage and
/// tracking peak memory.
///
/// The pipeline is assembled from Apple's public parts rather than with its `init(resourcesAt:)`, because
/// PocketSD bundles need three things that initializer fixes otherwise:
///   - the second tokenizer's pad token comes from the manifest (Apple hard-codes SDXL's "!");
///   - a multifunction UNet's function is chosen through `MLModelConfiguration.functionName` (iOS 18 /
///     macOS 15), on the UNet's configuration only;
///   - each text encoder is wrapped to time `encode` (see `TimedTextEncoder`).
/// Not thread-safe: use one engine from one task at a time (the app serializes generations).
@available(iOS 17.0, macOS 14.0, *)
public final class PocketSDEngine {
    public struct LoadSettings: Equatable, Sendable {
        public var computeUnits: ComputeUnitsChoice
        /// Apple's `reduceMemory`: models are loaded when needed and unloaded after their stage. Slower
        /// (every run reloads), but the peak is one model instead of all of them: the setting for iPhone.
        public var reduceMemory: Bool
        public var unetFunction: String?

        public init(computeUnits: ComputeUnitsChoice = .all, reduceMemory: Bool = PocketSDEngine.defaultReduceMemory,
                    unetFunction: String? = nil) {
            self.computeUnits = computeUnits
            self.reduceMemory = reduceMemory
            self.unetFunction = unetFunction
        }
    }

    public struct StepUpdate: Sendable {
        public let step: Int
        public let stepCount: Int
        public let seconds: Double
        public let footprintMB: Double?
    }

    public struct Output {
        public let image: CGImage
        public let report: GenerationReport
    }

    /// On by default on iOS, where the whole SDXL pipeline does not fit the app's memory limit.
    public static var defaultReduceMemory: Bool {
        #if os(iOS)
        return true
        #else
        return false
        #endif
    }

    public let resources: URL
    public let layout: BundleLayout
    public let manifest: BundleManifest
    public let memory: PeakMemoryTracker
    /// First (cold) load of each model in this process, by component (UNet functions apart).
    public private(set) var firstLoadSeconds: [String: Double] = [:]

    private var pipeline: StableDiffusionXLPipeline?
    private var loaded: LoadSettings?
    private let clock = StageClock()

    /// Reads the bundle's layout and manifest; loads no model yet.
    public init(resources url: URL) throws {
        let (resources, layout) = try BundleLayout.inspect(url)
        self.resources = resources
        self.layout = layout
        let manifest = try BundleManifest.load(resources: resources)
        try manifest.checkRunnable()
        self.manifest = manifest
        self.memory = PeakMemoryTracker()
    }

    /// Loads the models for `settings`, or keeps them if they are loaded that way already.
    /// Returns the seconds spent loading (0 when nothing had to load).
    @discardableResult
    public func prepare(_ settings: LoadSettings) throws -> Double {
        if let loaded, loaded == settings, pipeline != nil { return 0 }
        if let function = settings.unetFunction { try manifest.checkFunction(function) }
        pipeline?.unloadResources()
        pipeline = nil
        loaded = nil

        let config = MLModelConfiguration()
        config.computeUnits = settings.computeUnits.mlComputeUnits
        // The Neural Engine has no fp32: an fp32 VAE goes to CPU+GPU, as Apple's own loader does.
        let vaeConfig = config.copy() as! MLModelConfiguration
        if manifest.vaeIsFloat32 && settings.computeUnits != .cpuOnly { vaeConfig.computeUnits = .cpuAndGPU }
        let unetConfig = config.copy() as! MLModelConfiguration
        // The default function loads without naming it; naming any other needs iOS 18 / macOS 15.
        if let function = settings.unetFunction, function != manifest.defaultUnetFunction {
            if #available(iOS 18.0, macOS 15.0, *) {
                unetConfig.functionName = function
            } else {
                throw PocketSDError.platformUnsupported(
                    "choosing the UNet function \"\(function)\" (a LoRA style) needs iOS 18 / macOS 15; update, or use a bundle with the style baked in")
            }
        }

        func url(_ component: String) -> URL { layout.modelURL(component, in: resources) }
        let vocab = resources.appendingPathComponent(BundleLayout.vocab)
        let merges = resources.appendingPathComponent(BundleLayout.merges)
        let tokenizer = try BPETokenizer(mergesAt: merges, vocabularyAt: vocab)
        let tokenizer2 = try BPETokenizer(mergesAt: merges, vocabularyAt: vocab, padToken: manifest.textEncoder2PadToken)
        let textEncoder = TextEncoderXL(tokenizer: tokenizer, modelAt: url(BundleLayout.textEncoder), configuration: config)
        let textEncoder2 = TextEncoderXL(tokenizer: tokenizer2, modelAt: url(BundleLayout.textEncoder2), configuration: config)
        let unet: Unet
        switch layout.unet {
        case .chunked: unet = Unet(chunksAt: layout.unetComponents.map(url), configuration: unetConfig)
        case .single: unet = Unet(modelAt: url(BundleLayout.unet), configuration: unetConfig)
        }
        let decoder = Decoder(modelAt: url(BundleLayout.decoder), configuration: vaeConfig)
        let encoder = layout.hasEncoder ? Encoder(modelAt: url(BundleLayout.encoder), configuration: vaeConfig) : nil

        // Load each model on its own to time it (the first load of a model compiles it for the device).
        // With reduceMemory each is loaded and dropped again ("prewarm", as Apple's pipeline does), so the
        // compile is cached and the generation loads them one at a time.
        let unetName = layout.unetComponents.joined(separator: "+") + (settings.unetFunction.map { "[\($0)]" } ?? "")
        var parts: [(String, any ResourceManaging)] = [
            (BundleLayout.textEncoder, textEncoder), (BundleLayout.textEncoder2, textEncoder2),
            (unetName, unet), (BundleLayout.decoder, decoder),
        ]
        if let encoder { parts.append((BundleLayout.encoder, encoder)) }
        var total = 0.0
        for (name, part) in parts {
            let (_, seconds) = try clock.measure {
                try part.loadResources()
                if settings.reduceMemory { part.unloadResources() }
            }
            memory.record()
            if firstLoadSeconds[name] == nil { firstLoadSeconds[name] = seconds }
            total += seconds
        }

        pipeline = StableDiffusionXLPipeline(
            textEncoder: TimedTextEncoder(base: textEncoder, clock: clock),
            textEncoder2: TimedTextEncoder(base: textEncoder2, clock: clock),
            unet: unet,
            unetRefiner: nil,
            decoder: decoder,
            encoder: encoder,
            reduceMemory: settings.reduceMemory)
        loaded = settings
        return total
    }

    /// Frees every model (the app calls this on a memory warning).
    public func unload() {
        pipeline?.unloadResources()
        pipeline = nil
        loaded = nil
    }

    /// One image. `startingImage` must already be at the bundle's size (see `ImageFiles.fit`).
    /// `onStep` runs after every denoising step; returning false cancels (throws `CancellationError`).
    public func generate(_ request: ResolvedRequest, startingImage: CGImage?, loadSeconds: Double, outputPath: String,
                         onStep: (StepUpdate) -> Bool = { _ in true }) throws -> Output {
        guard let pipeline else {
            throw PocketSDError.badInput("the models are not loaded; call prepare() first")
        }
        if startingImage != nil && !layout.hasEncoder {
            throw PocketSDError.badInput("this bundle has no VAEEncoder, so no image → image; re-run `pocketsd convert` (it writes VAEEncoder)")
        }
        let size = manifest.imageSize
        var config = StableDiffusionXLPipeline.Configuration(prompt: request.expandedPrompt)
        config.negativePrompt = request.negativePrompt
        config.stepCount = request.steps
        config.seed = request.seed
        config.guidanceScale = Float(request.guidance)
        config.schedulerType = request.scheduler.used == .pndm ? .pndmScheduler : .dpmSolverMultistepScheduler
        // Torch's generator, so a seed starts from the same noise as `pocketsd generate` on CPU.
        config.rngType = .torchRNG
        config.encoderScaleFactor = Float32(manifest.vaeScalingFactor)
        config.decoderScaleFactor = Float32(manifest.vaeScalingFactor)
        // SDXL micro-conditioning: original and target size are the image size (Apple's defaults say 1024).
        config.originalSize = Float32(size.height)
        config.targetSize = Float32(size.height)
        config.disableSafety = true
        if let startingImage, let strength = request.strength {
            config.startingImage = startingImage
            config.strength = Float(strength)
        }

        clock.begin()
        memory.record()
        var cancelled = false
        let images = try pipeline.generateImages(configuration: config) { progress in
            let seconds = clock.markStep()
            let sample = memory.record()
            let update = StepUpdate(step: progress.step + 1, stepCount: progress.stepCount, seconds: seconds,
                                    footprintMB: sample.footprintBytes.map { Double($0) / 1_048_576 })
            cancelled = !onStep(update)
            return !cancelled
        }
        if cancelled { throw CancellationError() }
        clock.markDecoded()
        memory.record()
        guard let first = images.first, let image = first else {
            throw PocketSDError.badInput("the pipeline returned no image")
        }

        let unetBytes = manifest.unetBytes
            ?? layout.unetComponents.map { BundleLayout.folderBytes(layout.modelURL($0, in: resources)) }.reduce(0, +)
        let report = GenerationReport(
            request: request,
            size: [size.width, size.height],
            model: .init(path: resources.path, unetBytes: unetBytes, bitsPerWeight: manifest.bitsPerWeight),
            timings: clock.timings(load: loadSeconds),
            memory: memory.report,
            output: outputPath,
            firstLoadSeconds: firstLoadSeconds)
        return Output(image: image, report: report)
    }
}
#endif
