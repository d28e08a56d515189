import XCTest
@testable import PocketSDKit

/// What an audit found would go wrong on the first iPhone run (issue 23): a trap on NaN, stale residency after a
/// cancelled prewarm, iCloud files listed under their real names, security scopes, and the report rewrite that
/// must not cost the image. Each is checked here on the platform-independent code the app and the tool call.
final class FirstRunTests: XCTestCase {
    func request(steps: Int = 4) -> DiffusionLoop.Request {
        DiffusionLoop.Request(prompt: "a red circle", negativePrompt: "blurry", steps: steps, guidance: 5, seed: 1, scheduler: .euler)
    }

    func badInputMessage(_ error: Error, file: StaticString = #filePath, line: UInt = #line) -> String {
        guard case .badInput(let message) = error as? PocketSDError else {
            XCTFail("expected a one-line PocketSDError.badInput, got \(error)", file: file, line: line)
            return ""
        }
        XCTAssertFalse(message.contains("\n"), "one line", file: file, line: line)
        return message
    }

    // MARK: NaN / inf

    func testANaNStepStopsTheRunWithOneLineNamingTheStep() throws {
        for lowMemory in [true, false] {
            var bundle = FakeBundle()
            bundle.lowMemory = lowMemory
            let (loop, unet, residency) = bundle.make()
            unet[0].nanAtCall = 2
            XCTAssertThrowsError(try loop.run(request(steps: 4), timer: RunTimer())) { error in
                let message = self.badInputMessage(error)
                XCTAssertTrue(message.hasPrefix("the UNet (denoising step 2 of 4) produced NaN/inf values; nothing was written"), message)
            }
            XCTAssertEqual(unet[0].calls, 2, "stops at the step that overflowed, not after the last one")
            XCTAssertEqual(bundle.log.count("predict VAEDecoder"), 0, "nothing decoded")
            XCTAssertEqual(residency.resident, [], "a failure unloads (lowMemory \(lowMemory))")
        }
    }

    func testAnOverflowingDecoderIsAnErrorNotATrap() throws {
        let bundle = FakeBundle()
        let (loop, _, _) = bundle.make()
        (loop.models.vaeDecoder as! FakeDecoder).overflows = true
        XCTAssertThrowsError(try loop.run(request(), timer: RunTimer())) { error in
            XCTAssertTrue(self.badInputMessage(error).hasPrefix("the VAE decoder produced NaN/inf values"))
        }
    }

    func testPixelsFromNaNAreRefusedNotTrapped() {
        // Before the guard, UInt8(NaN) trapped here and took the test process (and the app) down.
        var scalars = [Float](repeating: 0.25, count: 3 * 2 * 2)
        scalars[5] = .nan
        XCTAssertThrowsError(try ImageTensors.rgb(Tensor(shape: [1, 3, 2, 2], scalars: scalars))) { error in
            XCTAssertTrue(self.badInputMessage(error).contains("NaN/inf"))
        }
        scalars[5] = -.infinity
        XCTAssertThrowsError(try ImageTensors.rgb(Tensor(shape: [1, 3, 2, 2], scalars: scalars)))
        scalars[5] = 0.25
        XCTAssertEqual(try ImageTensors.rgb(Tensor(shape: [1, 3, 2, 2], scalars: scalars)).pixels, [UInt8](repeating: 159, count: 12))
    }

    // MARK: residency after a prewarm that did not finish

    func testACancelledOrFailedPrewarmLeavesNothingResidentInEitherMode() throws {
        for lowMemory in [true, false] {
            var bundle = FakeBundle()
            bundle.lowMemory = lowMemory
            let (loop, _, residency) = bundle.make()
            var asked = 0
            XCTAssertThrowsError(try loop.prewarm(shouldContinue: { asked += 1; return asked <= 2 })) { error in
                XCTAssertTrue(error is CancellationError)
            }
            XCTAssertEqual(residency.resident, [], "a cancelled prewarm (lowMemory \(lowMemory)) keeps no names")
            XCTAssertEqual(bundle.log.resident, [], "and no model loaded")

            // The next prewarm loads (and times) every model again instead of skipping the stale names.
            let loadsBefore = bundle.log.count("load")
            let timer = RunTimer()
            try loop.prewarm(timer: timer)
            XCTAssertEqual(bundle.log.count("load") - loadsBefore, lowMemory ? 5 : 4)

            let (failing, _, failingResidency) = bundle.make()
            (failing.models.unet[0] as! FakeUNet).failOnLoad = true
            XCTAssertThrowsError(try failing.prewarm())
            XCTAssertEqual(failingResidency.resident, [], "a failed load (lowMemory \(lowMemory)) keeps no names")
        }
    }

    // MARK: iCloud

    func testICloudFilesListedUnderTheirRealNamesArePending() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-icloud-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let package = root.appendingPathComponent("Unet.mlpackage/Data")
        try FileManager.default.createDirectory(at: package, withIntermediateDirectories: true)
        for name in ["vocab.json", "merges.txt", ".TextEncoder.mlmodelc.icloud", "Unet.mlpackage/Data/weight.bin", "Unet.mlpackage/Manifest.json"] {
            try Data("x".utf8).write(to: root.appendingPathComponent(name))
        }
        // FileProvider iCloud Drive: real names, and only the resource values say the data is not here.
        let status: (URL) -> ICloudFiles.Status? = { url in
            switch url.lastPathComponent {
            case "weight.bin", "merges.txt": return .notDownloaded
            case "vocab.json": return .current
            case "Manifest.json": return .downloaded
            default: return nil
            }
        }
        let pending = ICloudFiles.placeholders(under: root, status: status).map { $0.path.replacingOccurrences(of: root.standardizedFileURL.path, with: "") }
        XCTAssertEqual(pending, ["/TextEncoder.mlmodelc", "/Unet.mlpackage/Data/weight.bin", "/merges.txt"])
        // Outside iCloud (and on Linux) nothing is pending but the name placeholders.
        XCTAssertEqual(ICloudFiles.placeholders(under: root, status: { _ in nil }).map(\.lastPathComponent), ["TextEncoder.mlmodelc"])
    }

    // MARK: security scope

    func testAFolderThatNeedsNoScopeOpensAndOwesNoStop() throws {
        let readable = FileManager.default.temporaryDirectory
        let opened = try FolderAccess.open(readable, startScope: { _ in false })
        XCTAssertEqual(opened, FolderAccess.Opened(url: readable, scoped: false))

        let scoped = try FolderAccess.open(readable, startScope: { _ in true }, isReadable: { _ in false })
        XCTAssertTrue(scoped.scoped, "a scope that opened is closed later")

        let gone = readable.appendingPathComponent("pocketsd-no-such-folder-\(UUID().uuidString)")
        XCTAssertThrowsError(try FolderAccess.open(gone, startScope: { _ in false })) { error in
            XCTAssertTrue(self.badInputMessage(error).hasSuffix("choose the folder again"))
        }
    }

    // MARK: the report rewritten after the image is safe

    func testTheReportIsRewrittenWholeAndThePNGIsLeftAlone() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-rewrite-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let pair = ReportFiles.names(in: folder, date: Date(timeIntervalSince1970: 1_800_000_000), seed: 3)
        var request = GenerationRequest(prompt: "a red circle")
        request.seed = 3
        var report = GenerationReport(
            request: try request.resolve(catalog: nil), size: [128, 128],
            model: .init(path: "/b/Resources", unetBytes: 2048, bitsPerWeight: nil),
            timings: .init(load: 1.5, textEncode: 0.25, unetSteps: [0.1], vaeDecode: 0.5, total: 3.0),
            memory: .init(peakRSSMB: 100.5, peakFootprintMB: nil), output: "", backendDetails: .init(), device: nil)
        report.output = pair.png.path
        let png = try PNGText.insert(report.pngText, into: PNGTextTests.tinyPNG)
        try ReportFiles.write(png: png, report: report, to: pair)
        XCTAssertEqual(try JSONValue.parse(Data(contentsOf: pair.json))["backend_details"]?["compute_plan"], JSONValue.null)

        var plan = ComputePlanSummary()
        plan.add(device: "neural_engine", cost: 0.75)
        plan.add(device: "cpu", cost: 0.25)
        report.backendDetails.computePlan = ["Unet": plan]
        try ReportFiles.rewriteReport(report, in: pair)
        let rewritten = try JSONValue.parse(Data(contentsOf: pair.json))
        XCTAssertNotNil(rewritten["backend_details"]?["compute_plan"]?["Unet"]?.object, "the plan is in the report")
        XCTAssertEqual(try Data(contentsOf: pair.png), png, "the PNG is not touched")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted(),
                       [pair.json.lastPathComponent, pair.png.lastPathComponent], "no temporary file left behind")

        try FileManager.default.removeItem(at: pair.png)
        XCTAssertThrowsError(try ReportFiles.rewriteReport(report, in: pair), "a deleted image does not get its report back")
    }
}
