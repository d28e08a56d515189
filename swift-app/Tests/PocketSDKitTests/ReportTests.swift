import XCTest
@testable import PocketSDKit

final class ReportTests: XCTestCase {
    func makeReport() throws -> GenerationReport {
        var request = GenerationRequest(prompt: "a red circle")
        request.seed = 5
        request.steps = 3
        request.computeUnits = .cpuAndNeuralEngine
        let resolved = try request.resolve(catalog: nil)
        return GenerationReport(
            request: resolved, size: [128, 128],
            model: .init(path: "/b/Resources", unetBytes: 2048, bitsPerWeight: nil),
            timings: .init(load: 1.5, textEncode: 0.25, unetSteps: [0.1, 0.2, 0.3], vaeDecode: 0.5, total: 3.0),
            memory: .init(peakRSSMB: 100.5, peakFootprintMB: nil),
            output: "out.png", backendDetails: .init(firstLoadSeconds: ["Unet": 1.0]), device: "iPhone16,2")
    }

    /// The contract's keys, with null for absent values, and numbers as numbers.
    func testJSONHasTheContractKeys() throws {
        let data = try makeReport().encoded()
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for key in ["pocketsd_version", "prompt", "expanded_prompt", "negative_prompt", "seed", "steps", "guidance",
                    "scheduler", "size", "backend", "compute_units", "domain", "loras", "model", "timings_s", "device", "memory", "output",
                    // what the Python CLI adds too
                    "input", "low_memory", "memory_method", "warnings", "backend_details"] {
            XCTAssertNotNil(object[key], "missing \(key)")
        }
        XCTAssertTrue(object["domain"] is NSNull)
        XCTAssertTrue(object["negative_prompt"] is NSNull, "no negative prompt is null, as the Python report writes it")
        XCTAssertEqual(object["device"] as? String, "iPhone16,2")
        XCTAssertEqual(object["backend"] as? String, "coreml")
        XCTAssertEqual(object["compute_units"] as? String, "cpu_and_ne")
        XCTAssertEqual(object["seed"] as? Int, 5)
        XCTAssertEqual(object["size"] as? [Int], [128, 128])
        let model = try XCTUnwrap(object["model"] as? [String: Any])
        XCTAssertEqual(model["kind"] as? String, "coreml")
        XCTAssertEqual(model["unet_bytes"] as? Int, 2048)
        XCTAssertTrue(model["bits_per_weight"] is NSNull)
        let timings = try XCTUnwrap(object["timings_s"] as? [String: Any])
        XCTAssertEqual(timings["unet_steps"] as? [Double], [0.1, 0.2, 0.3])
        XCTAssertEqual(timings["load"] as? Double, 1.5)
        XCTAssertNil(timings["vae_encode"], "vae_encode appears only when measured")
        let memory = try XCTUnwrap(object["memory"] as? [String: Any])
        XCTAssertEqual(memory["peak_rss_mb"] as? Double, 100.5)
        XCTAssertTrue(memory["peak_footprint_mb"] is NSNull)
        XCTAssertTrue(memory["cuda_peak_mb"] is NSNull)
        XCTAssertTrue(memory["mps_peak_mb"] is NSNull)
        let details = try XCTUnwrap(object["backend_details"] as? [String: Any])
        XCTAssertEqual((details["first_load_s"] as? [String: Double])?["Unet"], 1.0)
        XCTAssertEqual(details["compute_units"] as? String, "cpu_and_ne")
        XCTAssertTrue(details["compute_plan"] is NSNull)
    }

    func testJSONRoundTripsThroughTheTree() throws {
        let report = try makeReport()
        let tree = try JSONValue.parse(report.encoded())
        XCTAssertEqual(tree, report.json)
        XCTAssertEqual(tree[path: "timings_s", "total"]?.double, 3.0)
    }

    func testPNGTextUsesThePythonKeys() throws {
        let keys = try makeReport().pngText.map(\.key)
        XCTAssertEqual(keys.first, "prompt")
        for key in ["pocketsd:seed", "pocketsd:steps", "pocketsd:guidance", "pocketsd:scheduler", "pocketsd:model", "pocketsd:device", "Software"] {
            XCTAssertTrue(keys.contains(key), "missing \(key)")
        }
        XCTAssertEqual(GenerationReport.plain(5), "5.0")
        XCTAssertEqual(GenerationReport.plain(7.5), "7.5")
    }

    func testStepStats() {
        let stats = StepStats([0.4, 0.1, 0.3, 0.2])
        XCTAssertEqual(stats.count, 4)
        XCTAssertEqual(stats.mean, 0.25, accuracy: 1e-12)
        XCTAssertEqual(stats.median, 0.25, accuracy: 1e-12)
        XCTAssertEqual(stats.min, 0.1)
        XCTAssertEqual(stats.max, 0.4)
        XCTAssertEqual(StepStats([0.3, 0.1, 0.2]).median, 0.2)
        XCTAssertEqual(StepStats([]).count, 0)
    }

    func testRunSummaryShowsEveryStage() throws {
        let text = TextSummaries.describeRun(try makeReport())
        for fragment in ["load", "text encode", "UNet step ×3", "200 ms", "VAE decode", "total", "3.00 s", "peak RSS"] {
            XCTAssertTrue(text.contains(fragment), "missing \(fragment) in:\n\(text)")
        }
        XCTAssertFalse(text.contains("footprint"), "no footprint line when none was measured")
    }

    func testComputePlanSharesAndJSON() throws {
        var plan = ComputePlanSummary()
        for _ in 0..<9 { plan.add(device: "neural_engine", cost: 1.0) }
        plan.add(device: "cpu", cost: 3.0)
        XCTAssertEqual(plan.operations, 10)
        XCTAssertEqual(plan.operationShare("neural_engine"), 0.9, accuracy: 1e-12)
        XCTAssertEqual(plan.costShare("cpu") ?? 0, 0.25, accuracy: 1e-12)
        XCTAssertEqual(plan.line, "NE 90% · GPU 0% · CPU 10% of 10 ops")
        var report = try makeReport()
        report.backendDetails.computePlan = ["UnetChunk1": plan]
        let tree = try JSONValue.parse(report.encoded())
        XCTAssertEqual(tree[path: "backend_details", "compute_plan", "UnetChunk1", "operation_share", "neural_engine"]?.double, 0.9)
        XCTAssertEqual(tree[path: "backend_details", "compute_plan", "UnetChunk1", "cost_share", "gpu"]?.double, 0)
        var empty = ComputePlanSummary()
        XCTAssertNil(empty.costShare("cpu"))
        empty.add(device: "gpu", cost: nil)
        XCTAssertNil(empty.costShare("gpu"), "no costs from Core ML: no cost share")
    }

    func testReportFilesArePairedAndNamedByTimeAndSeed() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pocketsd-reports-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let date = Date(timeIntervalSince1970: 1_800_000_000)
        let first = ReportFiles.names(in: folder, date: date, seed: 5)
        XCTAssertEqual(first.png.lastPathComponent, "pocketsd-20270115-080000-seed5.png")
        var report = try makeReport()
        report.output = first.png.path
        let png = try PNGText.insert(report.pngText, into: PNGTextTests.tinyPNG)
        try ReportFiles.write(png: png, report: report, to: first)
        let second = ReportFiles.names(in: folder, date: date, seed: 5)
        XCTAssertEqual(second.png.lastPathComponent, "pocketsd-20270115-080000-seed5-2.png", "never overwrites")
        XCTAssertEqual(ReportFiles.list(in: folder), [first])
        let written = try JSONValue.parse(Data(contentsOf: first.json))
        XCTAssertEqual(written["output"]?.string, first.png.path)
        XCTAssertEqual(PNGText.read(try Data(contentsOf: first.png))["pocketsd:seed"], "5")

        // The report cannot be written (its path is a folder): no PNG is left without its report.
        let blocked = ReportFiles.names(in: folder, date: date.addingTimeInterval(1), seed: 6)
        try FileManager.default.createDirectory(at: blocked.json, withIntermediateDirectories: true)
        XCTAssertThrowsError(try ReportFiles.write(png: png, report: report, to: blocked))
        XCTAssertFalse(FileManager.default.fileExists(atPath: blocked.png.path))
    }

    func testReadableErrorsAreOneSentence() {
        XCTAssertEqual(ReadableError.sentence(PocketSDError.badInput("the prompt is empty; say what to draw")),
                       "The prompt is empty; say what to draw.")
        XCTAssertEqual(ReadableError.sentence(CancellationError()), "Stopped.")
        let coreML = NSError(domain: "com.apple.CoreML", code: 0,
                             userInfo: [NSLocalizedDescriptionKey: "Failed to build the model execution plan.\nE5RT: internal error (11)"])
        XCTAssertEqual(ReadableError.sentence(coreML), "Core ML could not load or run a model: Failed to build the model execution plan.")
        let missing = NSError(domain: NSCocoaErrorDomain, code: NSFileReadNoSuchFileError, userInfo: [NSFilePathErrorKey: "/x/Unet.mlmodelc"])
        XCTAssertEqual(ReadableError.sentence(missing), "A file of the bundle is missing (Unet.mlmodelc); copy the whole bundle folder again.")
    }
}

final class RunTimerTests: XCTestCase {
    /// A clock that advances only when told: every stage boundary lands where the test puts it.
    final class FakeTime {
        var now = 100.0
    }

    func testStagesAddUpAndStepsAreKeptOneByOne() throws {
        let time = FakeTime()
        let timer = RunTimer(now: { time.now })
        timer.add("load", seconds: 2)
        timer.time("text_encode") { time.now += 0.25 }
        timer.time("text_encode") { time.now += 0.5 }
        timer.step(0.1)
        timer.step(0.3)
        timer.time("vae_decode") { time.now += 1 }
        let timings = timer.timings()
        XCTAssertEqual(timings.load, 2)
        XCTAssertEqual(timings.textEncode, 0.75, accuracy: 1e-12)
        XCTAssertEqual(timings.unetSteps, [0.1, 0.3])
        XCTAssertEqual(timings.vaeDecode, 1, accuracy: 1e-12)
        XCTAssertNil(timings.vaeEncode, "vae_encode only when an image was encoded")
        XCTAssertEqual(timings.total, 1.75, accuracy: 1e-12, "total is the wall time since the timer started")
    }

    func testErrorsInsideAStageStillCount() {
        struct Boom: Error {}
        let time = FakeTime()
        let timer = RunTimer(now: { time.now })
        XCTAssertThrowsError(try timer.time("text_encode") { time.now += 0.4; throw Boom() })
        XCTAssertEqual(timer.seconds("text_encode"), 0.4, accuracy: 1e-9)
    }

    func testMonotonicClockMoves() {
        let a = RunTimer.monotonicSeconds()
        var x = 0.0
        for i in 0..<100_000 { x += Double(i) }
        XCTAssertGreaterThan(x, 0)
        XCTAssertGreaterThanOrEqual(RunTimer.monotonicSeconds(), a)
    }
}

final class MemoryTests: XCTestCase {
    /// Probe answers from a script; the sampler's thread is kept out of the way (long interval) so only marks count.
    final class Script: @unchecked Sendable {
        private let lock = NSLock()
        var samples: [MemorySample]
        init(_ samples: [MemorySample]) { self.samples = samples }
        func next() -> MemorySample {
            lock.lock(); defer { lock.unlock() }
            return samples.count > 1 ? samples.removeFirst() : samples[0]
        }
    }

    func testEachRunHasItsOwnPeakBesideTheLifetimeMark() {
        let mb: UInt64 = 1 << 20
        let script = Script([
            // run 1: rises to 900 MB
            MemorySample(residentBytes: 100 * mb, footprintBytes: 200 * mb, peakFootprintBytes: 200 * mb),
            MemorySample(residentBytes: 300 * mb, footprintBytes: 900 * mb, peakFootprintBytes: 900 * mb),
            MemorySample(residentBytes: 100 * mb, footprintBytes: 250 * mb, peakFootprintBytes: 900 * mb),
            // run 2: never above 400 MB, while the kernel's lifetime mark stays at 900
            MemorySample(residentBytes: 100 * mb, footprintBytes: 250 * mb, peakFootprintBytes: 900 * mb),
            MemorySample(residentBytes: 150 * mb, footprintBytes: 400 * mb, peakFootprintBytes: 900 * mb),
            MemorySample(residentBytes: 120 * mb, footprintBytes: 260 * mb, peakFootprintBytes: 900 * mb),
        ])
        let sampler = MemorySampler(probe: script.next, interval: 3600)
        sampler.start()
        sampler.mark()
        let first = sampler.stop()
        XCTAssertEqual(first.peakFootprintBytes, 900 * mb)
        sampler.start()
        sampler.mark()
        let second = sampler.stop()
        XCTAssertEqual(second.peakFootprintBytes, 400 * mb, "the second run's own peak")
        XCTAssertEqual(second.lifetimePeakFootprintBytes, 900 * mb, "the kernel's mark, since launch")
        XCTAssertEqual(second.peakResidentBytes, 150 * mb)
        XCTAssertEqual(second.samples, 3)
        let memory = MemorySampler.report(second, availableBefore: 2048 * Int(mb), weightsPeak: (600 * Int(mb), ["UnetChunk1"]))
        XCTAssertEqual(memory.peakFootprintMB, 400)
        XCTAssertEqual(memory.lifetimePeakFootprintMB, 900)
        XCTAssertEqual(memory.availableBeforeMB, 2048)
        XCTAssertEqual(memory.modelWeightsPeakMB, 600)
    }

    func testTheSamplerThreadSamplesOnItsOwnAndStops() {
        let sampler = MemorySampler(probe: { MemorySample(residentBytes: 1 << 20) }, interval: 0.002)
        sampler.start()
        Thread.sleep(forTimeInterval: 0.1)
        let result = sampler.stop()
        XCTAssertGreaterThan(result.samples, 5, "the background thread took samples")
        let after = sampler.peaks.samples
        Thread.sleep(forTimeInterval: 0.02)
        XCTAssertEqual(sampler.peaks.samples, after, "no samples after stop")
        XCTAssertNil(result.peakFootprintBytes)
    }

    func testThisProcessHasResidentMemory() {
        let sample = MemoryProbe.sample()
        XCTAssertGreaterThan(sample.residentBytes, 1 << 20, "a running test process holds more than 1 MB")
        #if os(Linux)
        XCTAssertNil(sample.footprintBytes)
        XCTAssertGreaterThanOrEqual(sample.peakResidentBytes ?? 0, sample.residentBytes)
        #else
        XCTAssertGreaterThan(sample.footprintBytes ?? 0, 0)
        #endif
    }

    #if os(Linux)
    func testProcStatusParsing() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
        let sample = MemoryProbe.linuxSample(status: status)
        XCTAssertEqual(sample.residentBytes, 1024 * 1024)
        XCTAssertEqual(sample.peakResidentBytes, 2048 * 1024)
    }
    #endif
}
