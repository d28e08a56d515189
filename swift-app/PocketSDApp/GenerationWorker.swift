import CoreGraphics
import Foundation
import PocketSDKit

/// Owns the engine off the main thread: one generation at a time, models kept loaded between them.
actor GenerationWorker {
    struct Result {
        let image: CGImage
        let report: GenerationReport
    }

    private var engine: PocketSDEngine?

    /// The bundle's manifest facts, reading no model (for the picker and the image size).
    func open(_ resources: URL) throws -> BundleManifest {
        if engine?.resources.standardizedFileURL != BundleLayout.resourcesFolder(resources).standardizedFileURL {
            engine?.unload()
            engine = try PocketSDEngine(resources: resources)
        }
        return engine!.manifest
    }

    func generate(_ request: GenerationRequest, catalog: DomainCatalog?, photo: CGImage?, sketch: CGImage?,
                  reduceMemory: Bool, cancel: CancelFlag,
                  onStatus: @escaping @Sendable (String) -> Void,
                  onStep: @escaping @Sendable (PocketSDEngine.StepUpdate) -> Void) throws -> Result {
        guard let engine else { throw PocketSDError.badInput("choose a bundle first") }
        var resolved = try request.resolve(catalog: catalog, manifest: engine.manifest)
        let start = try ImageFiles.startingImage(photo: photo, sketch: sketch, prompt: resolved.prompt,
                                                 size: engine.manifest.imageSize, notes: &resolved.notes)
        for note in resolved.notes { onStatus(note) }
        onStatus("loading models (the first load compiles them for this device and can take minutes)…")
        let settings = PocketSDEngine.LoadSettings(computeUnits: resolved.computeUnits, reduceMemory: reduceMemory,
                                                   unetFunction: resolved.unetFunction)
        let loadSeconds = try engine.prepare(settings)
        onStatus("generating…")
        let output = try engine.generate(resolved, startingImage: start, loadSeconds: loadSeconds, outputPath: "(in app)") { update in
            onStep(update)
            return !cancel.isCancelled
        }
        return Result(image: output.image, report: output.report)
    }

    func unload() {
        engine?.unload()
    }
}

/// Set from the main thread, read from the worker's step callback.
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return cancelled }
    func cancel() { lock.lock(); cancelled = true; lock.unlock() }
}
