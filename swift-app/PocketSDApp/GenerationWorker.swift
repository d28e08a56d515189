import CoreGraphics
import Foundation
import PocketSDKit

/// Owns the engine off the main thread: one job at a time on a serial queue, models kept between runs when
/// the schedule allows. Generation is long, synchronous Core ML work; it runs on this queue rather than in an
/// actor so it never holds one of Swift concurrency's few cooperative threads for minutes.
final class GenerationWorker: @unchecked Sendable {
    struct BundleFacts: Sendable {
        let resources: URL
        let summary: String
        let imageSize: (height: Int, width: Int)
        let styles: [String]
        let defaultStyle: String?
        let controlNets: [String]
        let memoryLines: [String]
        let uncompiled: [String]
        let pendingDownloads: Int
        let hasEncoder: Bool
    }

    struct RunResult: Sendable {
        let pixels: RGBImage
        let report: GenerationReport
        let files: ReportFiles.Pair
    }

    enum Progress: Sendable {
        case status(String)
        case model(ModelResidency.Event)
        case compile(ModelCompiler.Event)
        case step(DiffusionLoop.StepProgress)
    }

    private let queue = DispatchQueue(label: "pocketsd.generation", qos: .userInitiated)
    private var engine: PocketSDEngine?

    private func onQueue<T>(_ work: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }

    /// Reads the bundle's manifest and layout; loads nothing.
    func open(_ folder: URL) async throws -> BundleFacts {
        try await onQueue { [self] in
            let resources = BundleLayout.resourcesFolder(folder).standardizedFileURL
            if engine?.resources.standardizedFileURL != resources {
                engine?.unload()
                engine = nil
                engine = try PocketSDEngine(resources: folder, cacheRoot: AppPaths.compiledModels)
            }
            return facts(engine!)
        }
    }

    private func facts(_ engine: PocketSDEngine) -> BundleFacts {
        let m = engine.manifest
        var summary = "\(m.imageSize.width)×\(m.imageSize.height), \(m.family.uppercased())"
        if let bits = m.bitsPerWeight { summary += String(format: ", %.2f bits/weight", bits) }
        if engine.layout.unet == .chunked { summary += ", chunked UNet" }
        if m.vaeIsFloat32 { summary += ", fp32 VAE (CPU+GPU)" }
        return BundleFacts(resources: engine.resources, summary: summary, imageSize: m.imageSize, styles: m.unetFunctions,
                           defaultStyle: m.defaultUnetFunction, controlNets: m.controlNets, memoryLines: m.memoryPlan.describe(),
                           uncompiled: engine.uncompiled, pendingDownloads: engine.pendingDownloads.count, hasEncoder: engine.layout.hasEncoder)
    }

    /// Downloads what iCloud has not, then compiles the `.mlpackage` files the cache lacks. Runs outside the queue
    /// (it awaits), which is safe because the app starts no other job while it runs.
    func deliver(onProgress: @escaping @Sendable (Progress) -> Void) async throws -> BundleFacts {
        guard let engine = try await onQueue({ [self] in self.engine }) else { throw PocketSDError.badInput("choose a bundle first") }
        try await ICloudDownload.fetch(engine.resources) { missing in
            if missing > 0 { onProgress(.status("downloading \(missing) file(s) of the bundle from iCloud…")) }
        }
        // Compiling a large package takes memory too: a kill here must be reported at the next launch.
        let journal = AppPaths.journal
        try journal.begin(.init(started: Date(), prompt: "", seed: 0, bundle: engine.resources.path, lowMemory: true, stage: "compiling"))
        defer { journal.end() }
        try await engine.compileIfNeeded { event in onProgress(.compile(event)) }
        return try await onQueue { [self] in facts(engine) }
    }

    /// One run: pre-flight, load, generate, write the PNG and its report into Documents.
    func generate(_ request: GenerationRequest, catalog: DomainCatalog?, photo: CGImage?, sketch: CGImage?, mask: CGImage?,
                  cancel: CancelFlag, onProgress: @escaping @Sendable (Progress) -> Void) async throws -> RunResult {
        guard let engine = try await onQueue({ [self] in self.engine }) else { throw PocketSDError.badInput("choose a bundle first") }
        var resolved = try request.resolve(catalog: catalog, manifest: engine.manifest)
        let inputs = try ImageFiles.runInputs(photo: photo, sketch: sketch, mask: mask, controlNet: resolved.controlNet != nil,
                                              prompt: resolved.prompt, size: engine.manifest.imageSize, notes: &resolved.notes)
        let settings = PocketSDEngine.LoadSettings(computeUnits: resolved.computeUnits, lowMemory: resolved.lowMemory,
                                                   unetFunction: resolved.unetFunction)
        if case .tooLarge(let message) = engine.preflight(settings, imageInput: inputs.start != nil, controlNet: resolved.controlNet) {
            throw PocketSDError.badInput(message)
        }
        let request = resolved
        let run = try await onQueue { [self] () -> GenerationWorker.RunResult in
            let timer = RunTimer()
            engine.onModelEvent = { onProgress(.model($0)) }
            onProgress(.status("loading models (a model's first load compiles it for this device: minutes for SDXL)…"))
            // The journal covers the loading too (engine.generate rewrites it with the run's stages).
            let journal = AppPaths.journal
            try journal.begin(.init(started: Date(), prompt: request.prompt, seed: request.seed, bundle: engine.resources.path,
                                    lowMemory: request.lowMemory, stage: "loading"))
            defer { journal.end() }
            try engine.prepare(settings, timer: timer, shouldContinue: { !cancel.isCancelled })
            let files = ReportFiles.names(in: AppPaths.reports, date: Date(), seed: request.seed)
            let output = try engine.generate(request, inputs: inputs, outputPath: files.png.lastPathComponent, journal: journal,
                                             observe: { event in
                                                 switch event {
                                                 case .stage(let stage): onProgress(.status(Self.stageLine(stage)))
                                                 case .step(let step): onProgress(.step(step))
                                                 case .model: break
                                                 }
                                             }, shouldContinue: { !cancel.isCancelled }, timer: timer)
            // The image and its report go to disk first: the compute plan below loads every model again, which
            // on an iPhone can take long or end in a Jetsam kill, and must not cost the image.
            try ReportFiles.write(png: output.png, report: output.report, to: files)
            _ = self
            return RunResult(pixels: output.pixels, report: output.report, files: files)
        }
        // Where each model runs (MLComputePlan), measured once per settings, then the report is rewritten whole.
        // Skipped after a cancel: it cannot be interrupted once started.
        guard !cancel.isCancelled else { return run }
        var report = run.report
        onProgress(.status("reading where each model runs (Core ML's compute plan)…"))
        await engine.attachComputePlans(to: &report, settings: settings)
        do {
            try await onQueue { try ReportFiles.rewriteReport(report, in: run.files) }
        } catch {
            // The pair on disk is whole without the plan; say so rather than fail a run whose image is saved.
            onProgress(.status("saved without the compute plan: \(ReadableError.sentence(error))"))
            return run
        }
        return RunResult(pixels: run.pixels, report: report, files: run.files)
    }

    static func stageLine(_ stage: String) -> String {
        switch stage {
        case "text_encode": return "encoding the prompt…"
        case "vae_encode": return "encoding the starting image…"
        case "denoise": return "denoising…"
        case "vae_decode": return "decoding the image…"
        default: return stage
        }
    }

    /// Frees the models (memory warning, background, or a bundle change).
    func unload() async {
        _ = try? await onQueue { [self] in engine?.unload() }
    }

    /// Removes every model the app compiled from `.mlpackage` files (they compile again on the next run).
    func removeCompiledModels() async throws {
        try await onQueue { [self] in
            engine?.unload()
            try CompiledModelCache(root: AppPaths.compiledModels).removeAll()
        }
    }
}

/// Set from the main thread, read from the worker's callbacks.
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return cancelled }
    func cancel() { lock.lock(); cancelled = true; lock.unlock() }
}
