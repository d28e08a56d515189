#if canImport(CoreML) && canImport(StableDiffusion)
import CoreML
import Foundation
import StableDiffusion

/// Runs a `pocketsd convert` bundle with PocketSD's own loop (`DiffusionLoop`) on Core ML models.
///
/// Why not Apple's `StableDiffusionXLPipeline.generateImages`: it reads the UNet's input shapes before encoding the
/// prompt, which loads the whole UNet next to the text encoders (so its `reduceMemory` never keeps the peak to one
/// model); its prewarm loads both UNet chunks at once; a cancel returns before it unloads; and its schedulers and
/// random draws differ from the Python CLI's (see `Schedulers.swift`, `TorchRandom.swift`). The loop reads every
/// shape from the manifest, follows the manifest's memory plan, and is checked against the Python loop's numbers.
/// From Apple's package it uses `ManagedMLModel` (load / unload / predict of one compiled model) and `BPETokenizer`.
///
/// Not thread-safe: use one engine from one task at a time (the app's worker is an actor).
@available(iOS 17.0, macOS 14.0, *)
public final class PocketSDEngine {
    public struct LoadSettings: Equatable, Sendable {
        public var computeUnits: ComputeUnitsChoice
        /// Each model loaded for its stage only (the text encoders one after the other), nothing kept between runs.
        public var lowMemory: Bool
        public var unetFunction: String?

        public init(computeUnits: ComputeUnitsChoice = .platformDefault, lowMemory: Bool = PlatformDefaults.lowMemory,
                    unetFunction: String? = nil) {
            self.computeUnits = computeUnits
            self.lowMemory = lowMemory
            self.unetFunction = unetFunction
        }
    }

    public struct Output {
        public let pixels: RGBImage
        /// The PNG with the report's text chunks.
        public let png: Data
        public let report: GenerationReport
    }

    public let resources: URL
    public let layout: BundleLayout
    public let manifest: BundleManifest
    public let residency: ModelResidency
    public let sampler = MemorySampler()
    public let cache: CompiledModelCache
    /// Seconds each `.mlpackage` took to compile on this device (only those compiled by this engine).
    public private(set) var compileSeconds: [String: Double] = [:]
    /// Called on every load / unload (the app's loading list).
    public var onModelEvent: ((ModelResidency.Event) -> Void)? {
        didSet { residency.observer = onModelEvent }
    }

    private var compiled: [String: URL] = [:]
    private var loop: DiffusionLoop?
    private var loaded: LoadSettings?
    private var lastSettings: LoadSettings?
    private var computePlans: [String: ComputePlanSummary]?
    private var computePlanNote: String?
    private var computePlanSettings: LoadSettings?

    /// Reads the bundle's layout and manifest; loads and compiles nothing yet.
    /// `cacheRoot`: where compiled `.mlpackage` files go (the app: Application Support/PocketSD/Compiled).
    public init(resources url: URL, cacheRoot: URL) throws {
        let (resources, layout) = try BundleLayout.inspect(url)
        self.resources = resources
        self.layout = layout
        let manifest = try BundleManifest.load(resources: resources)
        try manifest.checkRunnable()
        self.manifest = manifest
        residency = ModelResidency(weightBytes: manifest.memoryPlan.weightBytes)
        cache = CompiledModelCache(root: cacheRoot)
    }

    // MARK: delivery

    /// Files of the bundle iCloud has not downloaded yet.
    public var pendingDownloads: [URL] { ICloudFiles.placeholders(under: resources) }

    /// Components that still need an on-device compile (packages not in the cache yet).
    public var uncompiled: [String] {
        layout.needsCompile.filter { component in
            compiled[component] == nil && !cache.isCompiled(cache.compiledURL(
                component: component, package: layout.modelURL(component, in: resources), manifest: manifest))
        }
    }

    /// Compiles the bundle's `.mlpackage` files that the cache lacks (minutes for a real SDXL UNet).
    public func compileIfNeeded(onEvent: @Sendable (ModelCompiler.Event) -> Void = { _ in }) async throws {
        guard !layout.needsCompile.isEmpty else { return }
        let result = try await ModelCompiler.compileMissing(layout: layout, resources: resources, manifest: manifest, cache: cache, onEvent: onEvent)
        compiled.merge(result.urls) { _, new in new }
        compileSeconds.merge(result.seconds) { _, new in new }
    }

    /// The compiled model to load for `component`.
    func modelURL(_ component: String) throws -> URL {
        if let url = compiled[component] { return url }
        let url = layout.modelURL(component, in: resources)
        guard url.pathExtension == "mlpackage" else { return url }
        let cached = cache.compiledURL(component: component, package: url, manifest: manifest)
        if cache.isCompiled(cached) { return cached }
        throw PocketSDError.badInput("\(component) is an .mlpackage that has not been compiled on this device yet; the app compiles it before loading (compileIfNeeded)")
    }

    // MARK: memory

    public func planOptions(_ settings: LoadSettings, imageInput: Bool, controlNet: String?) -> MemoryPlan.Options {
        MemoryPlan.Options(lowMemory: settings.lowMemory, imageInput: imageInput, controlNet: controlNet)
    }

    /// Does the largest stage fit what the OS leaves the app? (Always `.unknown` on a Mac.)
    public func preflight(_ settings: LoadSettings, imageInput: Bool, controlNet: String?) -> MemoryPreflight.Verdict {
        var plan = manifest.memoryPlan
        // Models already resident in default mode cost nothing more.
        if !settings.lowMemory, loaded == settings {
            for name in residency.resident { plan.weightBytes[name] = 0 }
        }
        return MemoryPreflight.check(plan, options: planOptions(settings, imageInput: imageInput, controlNet: controlNet),
                                     availableBytes: DeviceInfo.availableMemory)
    }

    // MARK: loading

    /// Builds the models for `settings` and loads each once, one at a time (compiling for the device on the first
    /// load): kept loaded in default mode, dropped again in low-memory mode. Returns the seconds spent loading
    /// (0 when the models were ready already). `shouldContinue` is asked between models.
    @discardableResult
    public func prepare(_ settings: LoadSettings, timer: RunTimer? = nil, shouldContinue: () -> Bool = { true }) throws -> Double {
        if let loaded, loaded == settings, loop != nil { return 0 }
        if let function = settings.unetFunction { try manifest.checkFunction(function) }
        if let previous = loaded ?? lastSettings, previous.computeUnits != settings.computeUnits || previous.unetFunction != settings.unetFunction {
            // The OS compiles a model for each set of compute units (and each function): the next load is a first one.
            for name in residency.firstLoadSeconds.keys { residency.forgetFirstLoad(name) }
        }
        lastSettings = settings
        loop?.unloadAll()
        loop = nil
        loaded = nil

        let models = try makeModels(settings)
        let newLoop = DiffusionLoop(models: models, geometry: LoopGeometry(manifest: manifest, unetComponents: layout.unetComponents),
                                    schedulerConfig: manifest.schedulerConfig, residency: residency, lowMemory: settings.lowMemory)
        let seconds = try newLoop.prewarm(timer: timer, shouldContinue: shouldContinue)
        loop = newLoop
        loaded = settings
        return seconds
    }

    func configuration(for component: String, _ settings: LoadSettings) throws -> MLModelConfiguration {
        let config = MLModelConfiguration()
        config.computeUnits = settings.computeUnits.mlComputeUnits
        if component.hasPrefix("VAE"), manifest.vaeIsFloat32, settings.computeUnits != .cpuOnly {
            // The Neural Engine computes in fp16 only: an fp32 VAE goes to CPU+GPU, as Apple's own loader does.
            config.computeUnits = .cpuAndGPU
        }
        if component.hasPrefix("Unet"), let function = settings.unetFunction, function != manifest.defaultUnetFunction {
            if #available(iOS 18.0, macOS 15.0, *) {
                config.functionName = function
            } else {
                throw PocketSDError.platformUnsupported(
                    "the style \"\(function)\" is a function of a multifunction UNet, which needs iOS 18 / macOS 15; update, or use a bundle with the style baked in (`pocketsd convert --lora`)")
            }
        }
        return config
    }

    func makeModels(_ settings: LoadSettings) throws -> DiffusionLoop.Models {
        let merges = resources.appendingPathComponent(BundleLayout.merges)
        let vocab = resources.appendingPathComponent(BundleLayout.vocab)
        var encoders: [TextEncoderModel] = []
        for (index, name) in layout.textEncoders.enumerated() {
            let tokenizer = try BPETokenizer(mergesAt: merges, vocabularyAt: vocab, padToken: manifest.padTokens[min(index, manifest.padTokens.count - 1)])
            encoders.append(CoreMLTextEncoder(name: name, tokenizer: tokenizer, url: try modelURL(name),
                                              configuration: try configuration(for: name, settings),
                                              input: manifest.component(name)?.inputs.first,
                                              keepsPooled: manifest.family == "sdxl" && index == layout.textEncoders.count - 1))
        }
        func tensorModel(_ name: String) throws -> TensorModel {
            CoreMLTensorModel(name: name, url: try modelURL(name), configuration: try configuration(for: name, settings),
                              inputs: manifest.component(name)?.inputs ?? [])
        }
        let unet = try layout.unetComponents.map(tensorModel)
        var nets: [String: TensorModel] = [:]
        for name in layout.controlNets.keys { nets[name] = try tensorModel("\(BundleLayout.controlNetFolder)/\(name)") }
        return DiffusionLoop.Models(textEncoders: encoders, unet: unet, vaeDecoder: try tensorModel(BundleLayout.decoder),
                                    vaeEncoder: layout.hasEncoder ? try tensorModel(BundleLayout.encoder) : nil, controlNets: nets)
    }

    /// Frees every model (the app calls this on a memory warning and when it leaves the foreground).
    public func unload() {
        loop?.unloadAll()
        loop = nil
        loaded = nil
    }

    // MARK: where each model runs

    /// `MLComputePlan` for every compiled model, with the settings they load with (measured once per settings).
    /// iOS 17.4 / macOS 14.4.
    public func measureComputePlans(_ settings: LoadSettings) async -> (plans: [String: ComputePlanSummary]?, note: String?) {
        if computePlanSettings == settings { return (computePlans, computePlanNote) }
        computePlanSettings = settings
        guard #available(iOS 17.4, macOS 14.4, *) else {
            computePlans = nil
            computePlanNote = ComputePlanProbe.unavailableNote
            return (nil, computePlanNote)
        }
        var plans: [String: ComputePlanSummary] = [:]
        var failures: [String] = []
        let components = layout.textEncoders + layout.unetComponents + [BundleLayout.decoder] + (layout.hasEncoder ? [BundleLayout.encoder] : [])
        for component in components {
            do {
                let function = component.hasPrefix("Unet") ? settings.unetFunction ?? manifest.defaultUnetFunction : nil
                if let summary = try await ComputePlanProbe.summarize(modelAt: try modelURL(component), configuration: try configuration(for: component, settings),
                                                                      function: function) {
                    plans[component] = summary
                }
            } catch {
                failures.append("\(component): \(ReadableError.sentence(error))")
            }
        }
        let note = failures.isEmpty ? nil : "no compute plan for " + failures.joined(separator: " ")
        computePlans = plans.isEmpty ? nil : plans
        computePlanNote = note
        return (computePlans, note)
    }

    /// Adds the compute plans for `settings` to a run's report, measuring them first if this engine has not yet
    /// (after the run, so the first image does not wait for them; the PNG's text does not carry them).
    public func attachComputePlans(to report: inout GenerationReport, settings: LoadSettings) async {
        let (plans, note) = await measureComputePlans(settings)
        report.backendDetails.computePlan = plans
        report.backendDetails.computePlanNote = note
    }

    // MARK: a run

    /// One image. `prepare` first. `observe` sees stages, loads and steps; returning false from `shouldContinue`
    /// cancels (throws `CancellationError`) at the next step or stage.
    public func generate(_ request: ResolvedRequest, inputs: ImageFiles.RunInputs, outputPath: String, journal: RunJournal? = nil,
                         availableBefore: Int? = DeviceInfo.availableMemory,
                         observe: @escaping (DiffusionLoop.Event) -> Void = { _ in },
                         shouldContinue: @escaping () -> Bool = { true }, timer: RunTimer = RunTimer()) throws -> Output {
        guard let loop else { throw PocketSDError.badInput("the models are not loaded; call prepare() first") }
        let size = manifest.imageSize
        let inpaint = try inputs.mask.map {
            try ImageTensors.inpaintMask($0, blur: request.maskBlur, latentHeight: manifest.latentSize.height, latentWidth: manifest.latentSize.width)
        }
        let loopRequest = DiffusionLoop.Request(
            prompt: request.expandedPrompt, negativePrompt: request.negativePrompt, steps: request.steps, guidance: request.guidance,
            seed: request.seed, scheduler: request.scheduler,
            initImage: inputs.start.map(ImageTensors.tensor), strength: request.strength ?? ResolvedRequest.defaultImageStrength,
            mask: inpaint?.latent, maskAlpha: inpaint?.alpha, pasteBack: request.pasteBack,
            controlNet: request.controlNet, controlImage: inputs.control, controlScale: Float(request.controlScale),
            controlGuidanceStart: request.controlGuidanceStart, controlGuidanceEnd: request.controlGuidanceEnd)
        let options = planOptions(loaded ?? LoadSettings(), imageInput: inputs.start != nil, controlNet: request.controlNet)
        let plannedPeak = manifest.memoryPlan.largest(options)

        var entry = RunJournal.Entry(started: Date(), prompt: request.prompt, seed: request.seed, bundle: resources.path,
                                     lowMemory: request.lowMemory, stage: "text_encode",
                                     availableBeforeMB: availableBefore.map { MemorySampler.megabytes(UInt64(max(0, $0))) },
                                     plannedPeakMB: plannedPeak.map { MemorySampler.megabytes(UInt64($0.bytes)) })
        try journal?.begin(entry)
        defer { journal?.end() }
        residency.resetPeak()
        sampler.start()
        let output: DiffusionLoop.Output
        do {
            output = try loop.run(loopRequest, timer: timer, observe: { [sampler] event in
                let sample = sampler.mark()
                switch event {
                case .stage(let stage):
                    entry.stage = stage
                    entry.step = nil
                    entry.footprintMB = sample.footprintBytes.map(MemorySampler.megabytes)
                    journal?.update(entry)
                case .step(let progress):
                    entry.step = progress.step
                    entry.footprintMB = sample.footprintBytes.map(MemorySampler.megabytes)
                    journal?.update(entry)
                case .model:
                    break
                }
                observe(event)
            }, shouldContinue: shouldContinue)
        } catch {
            sampler.stop()
            throw error
        }
        let memory = sampler.stop()
        let pixels = try ImageTensors.rgb(output.image)

        let unetBytes = manifest.unetBytes
            ?? layout.unetComponents.map { BundleLayout.folderBytes(layout.modelURL($0, in: resources)) }.reduce(0, +)
        var warnings = output.warnings
        if manifest.vaeIsFloat32 {
            #if os(iOS)
            warnings.append("the VAE is fp32, so it runs on CPU+GPU (slower, more memory); convert with an fp16-safe VAE (see swift-app/README.md)")
            #endif
        }
        let details = GenerationReport.BackendDetails(
            computeUnits: request.computeUnits.rawValue, unetFunction: request.unetFunction,
            firstLoadSeconds: residency.firstLoadSeconds, compileSeconds: compileSeconds,
            computePlan: computePlanSettings == loaded ? computePlans : nil,
            computePlanNote: computePlanSettings == loaded ? computePlanNote : nil,
            plannedPeakStage: plannedPeak?.stage, plannedPeakMB: plannedPeak.map { MemorySampler.megabytes(UInt64($0.bytes)) })
        var report = GenerationReport(
            request: request, size: [size.width, size.height],
            model: .init(path: resources.path, unetBytes: unetBytes, bitsPerWeight: manifest.bitsPerWeight),
            timings: timer.timings(),
            memory: MemorySampler.report(memory, availableBefore: availableBefore,
                                         weightsPeak: (residency.peakResidentBytes, residency.peakResidentPackages)),
            output: outputPath, backendDetails: details, device: DeviceInfo.model, warnings: warnings)
        report.lowMemory = loaded?.lowMemory ?? request.lowMemory
        let png = try ImageFiles.pngData(pixels, text: report.pngText)
        return Output(pixels: pixels, png: png, report: report)
    }
}
#endif
