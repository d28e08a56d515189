#if canImport(CoreML) && canImport(StableDiffusion)
import CoreGraphics
import Foundation

/// `pocketsd-swift generate`: requests from the command line to PNGs and their JSON reports — the same report the
/// app writes and the Python CLI writes, so a Mac run compares field by field with `pocketsd generate`.
@available(iOS 17.0, macOS 14.0, *)
public enum CommandLineGeneration {
    public struct Outcome {
        public let report: GenerationReport
        public let imagePath: String
        public let reportPath: String
    }

    /// Where the command line tool keeps models it compiled from `.mlpackage` files.
    public static var cacheRoot: URL {
        let base = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask).first
            ?? FileManager.default.temporaryDirectory
        return base.appendingPathComponent("PocketSD/Compiled")
    }

    /// `say` receives progress and warnings, one line each (the tool prints them on stderr).
    public static func run(_ options: GenerateOptions, catalog: DomainCatalog, say: @escaping @Sendable (String) -> Void) throws -> [Outcome] {
        let engine = try PocketSDEngine(resources: URL(fileURLWithPath: options.resources), cacheRoot: cacheRoot)
        var request = try options.request.resolve(catalog: catalog, manifest: engine.manifest)
        for assumption in engine.manifest.assumptions { say("assumed: \(assumption)") }
        let pending = engine.pendingDownloads
        if !pending.isEmpty {
            throw PocketSDError.badInput("\(pending.count) file(s) of the bundle are still in iCloud (\(pending[0].lastPathComponent) …); "
                                         + "download the folder first (Finder: Download Now)")
        }
        let inputs = try runInputs(for: &request, size: engine.manifest.imageSize)
        for note in request.notes { say("warning: \(note)") }

        if !engine.uncompiled.isEmpty {
            say("compiling \(engine.uncompiled.joined(separator: ", ")) for this Mac (once; minutes for a real SDXL UNet)")
            try blocking {
                try await engine.compileIfNeeded { event in
                    if case .finished(let name, let seconds) = event { say("compiled \(name) in \(TextSummaries.seconds(seconds))") }
                }
            }
        }
        let settings = PocketSDEngine.LoadSettings(computeUnits: request.computeUnits, lowMemory: request.lowMemory,
                                                   unetFunction: request.unetFunction)
        if case .tooLarge(let message) = engine.preflight(settings, imageInput: inputs.start != nil, controlNet: request.controlNet) {
            throw PocketSDError.badInput(message)
        }

        var outcomes: [Outcome] = []
        for index in 0..<options.count {
            var run = request
            run.seed = request.seed &+ UInt32(index)
            let timer = RunTimer()
            engine.onModelEvent = { event in
                if case .loaded(let name, let seconds, let first) = event, first {
                    say("loaded \(name) in \(TextSummaries.seconds(seconds)) (first load: the OS compiles it for this device)")
                }
            }
            try engine.prepare(settings, timer: timer)
            let imagePath = options.outputPath(seed: run.seed)
            let reportPath = options.reportPath(seed: run.seed)
            let output = try engine.generate(run, inputs: inputs, outputPath: imagePath, observe: { event in
                if case .step(let progress) = event {
                    say("step \(progress.step)/\(progress.stepCount)  \(TextSummaries.seconds(progress.seconds))")
                }
            }, timer: timer)
            // The pair first, whole; then the compute plan (another load of every model) and the report again, so
            // a kill or a failure while reading the plan never loses the image.
            let pair = ReportFiles.Pair(png: URL(fileURLWithPath: imagePath), json: URL(fileURLWithPath: reportPath))
            try ReportFiles.write(png: output.png, report: output.report, to: pair)
            var report = output.report
            waitFor { await engine.attachComputePlans(to: &report, settings: settings) }
            try ReportFiles.rewriteReport(report, in: pair)
            outcomes.append(Outcome(report: report, imagePath: imagePath, reportPath: reportPath))
        }
        return outcomes
    }

    /// The run's inputs from --image / --sketch / --mask, at the bundle's size; notes go into the request.
    static func runInputs(for request: inout ResolvedRequest, size: (height: Int, width: Int)) throws -> ImageFiles.RunInputs {
        let photo = try request.imagePath.map { try ImageFiles.load(URL(fileURLWithPath: $0)) }
        let sketch = try request.sketchPath.map { try ImageFiles.load(URL(fileURLWithPath: $0)) }
        let mask = try request.maskPath.map { try ImageFiles.load(URL(fileURLWithPath: $0)) }
        return try ImageFiles.runInputs(photo: photo, sketch: sketch, mask: mask, controlNet: request.controlNet != nil,
                                        prompt: request.prompt, size: size, notes: &request.notes)
    }

    /// Waits for async work from the synchronous command line (the tool has nothing else to do meanwhile).
    static func blocking<T>(_ work: @escaping () async throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox<T>()
        Task {
            do { box.result = .success(try await work()) } catch { box.result = .failure(error) }
            done.signal()
        }
        done.wait()
        return try box.result!.get()
    }

    static func waitFor<T>(_ work: @escaping () async -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox<T>()
        Task {
            box.result = .success(await work())
            done.signal()
        }
        done.wait()
        guard case .success(let value) = box.result! else { fatalError("unreachable: the work cannot throw") }
        return value
    }

    final class ResultBox<T>: @unchecked Sendable {
        var result: Result<T, Error>?
    }
}
#endif
