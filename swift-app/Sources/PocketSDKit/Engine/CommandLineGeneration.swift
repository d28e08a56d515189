#if canImport(CoreML) && canImport(StableDiffusion)
import CoreGraphics
import Foundation

/// `pocketsd-swift generate`: one request from the command line to a PNG and its JSON report.
@available(iOS 17.0, macOS 14.0, *)
public enum CommandLineGeneration {
    public struct Outcome {
        public let report: GenerationReport
        public let imagePath: String
        public let reportPath: String
    }

    /// `say` receives progress and warnings, one line each (the tool prints them on stderr).
    public static func run(_ options: GenerateOptions, catalog: DomainCatalog, say: (String) -> Void) throws -> Outcome {
        let engine = try PocketSDEngine(resources: URL(fileURLWithPath: options.resources))
        var request = try options.request.resolve(catalog: catalog, manifest: engine.manifest)
        for assumption in engine.manifest.assumptions { say("assumed: \(assumption)") }

        let start = try startingImage(for: &request, size: engine.manifest.imageSize)
        for note in request.notes { say("warning: \(note)") }

        say("loading \(engine.resources.path) (a model's first load compiles it for this device and can take minutes)")
        let settings = PocketSDEngine.LoadSettings(computeUnits: request.computeUnits, reduceMemory: request.lowMemory,
                                                   unetFunction: request.unetFunction)
        let loadSeconds = try engine.prepare(settings)

        let imagePath = options.outputPath(seed: request.seed)
        let reportPath = options.reportPath(seed: request.seed)
        let output = try engine.generate(request, startingImage: start, loadSeconds: loadSeconds, outputPath: imagePath) { update in
            say("step \(update.step)/\(update.stepCount)  \(TextSummaries.seconds(update.seconds))")
            return true
        }

        // Whole files only: Data.write(.atomic) writes a temporary file and renames it into place.
        for path in [imagePath, reportPath] {
            let folder = URL(fileURLWithPath: path).deletingLastPathComponent()
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        }
        try ImageFiles.pngData(output.image, text: output.report.pngText).write(to: URL(fileURLWithPath: imagePath), options: .atomic)
        try output.report.encoded().write(to: URL(fileURLWithPath: reportPath), options: .atomic)
        return Outcome(report: output.report, imagePath: imagePath, reportPath: reportPath)
    }

    /// The image → image start from --image or --sketch, at the bundle's size; notes go into the request.
    static func startingImage(for request: inout ResolvedRequest, size: (height: Int, width: Int)) throws -> CGImage? {
        let photo = try request.imagePath.map { try ImageFiles.load(URL(fileURLWithPath: $0)) }
        let sketch = try request.sketchPath.map { try ImageFiles.load(URL(fileURLWithPath: $0)) }
        return try ImageFiles.startingImage(photo: photo, sketch: sketch, prompt: request.prompt, size: size, notes: &request.notes)
    }
}
#endif
