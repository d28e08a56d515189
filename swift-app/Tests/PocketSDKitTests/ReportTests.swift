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
            output: "out.png", firstLoadSeconds: ["Unet": 1.0])
    }

    /// The contract's keys, with null for absent values, and numbers as numbers.
    func testJSONHasTheContractKeys() throws {
        let data = try makeReport().encoded()
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for key in ["pocketsd_version", "prompt", "expanded_prompt", "negative_prompt", "seed", "steps", "guidance",
                    "scheduler", "size", "backend", "compute_units", "domain", "loras", "model", "timings_s", "memory", "output"] {
            XCTAssertNotNil(object[key], "missing \(key)")
        }
        XCTAssertTrue(object["domain"] is NSNull)
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
        XCTAssertEqual((object["first_load_s"] as? [String: Double])?["Unet"], 1.0)
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
        for key in ["pocketsd:seed", "pocketsd:steps", "pocketsd:guidance", "pocketsd:scheduler", "pocketsd:model", "Software"] {
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
}

final class StageClockTests: XCTestCase {
    /// A clock that advances only when told: every stage boundary lands where the test puts it.
    final class FakeTime {
        var now = 100.0
    }

    func testStagesAreCutAtTheEncoderAndStepEvents() throws {
        let time = FakeTime()
        let clock = StageClock(now: { time.now })
        clock.begin()
        time.now += 0.5                                   // latent set-up before encoding: not text encoding
        clock.timeTextEncode { time.now += 0.2 }          // prompt
        clock.timeTextEncode { time.now += 0.1 }          // negative prompt
        time.now += 1.0
        XCTAssertEqual(clock.markStep(), 1.0, accuracy: 1e-9)
        time.now += 0.75
        clock.markStep()
        time.now += 2.0
        clock.markDecoded()
        XCTAssertEqual(clock.textEncodeSeconds, 0.3, accuracy: 1e-9)
        XCTAssertEqual(clock.stepSeconds.count, 2)
        XCTAssertEqual(clock.stepSeconds[1], 0.75, accuracy: 1e-9)
        XCTAssertEqual(clock.decodeSeconds, 2.0, accuracy: 1e-9)
        let timings = clock.timings(load: 4.0)
        XCTAssertEqual(timings.total, 4.0 + 0.5 + 0.3 + 1.0 + 0.75 + 2.0, accuracy: 1e-9)
        XCTAssertEqual(timings.stepStats.mean, 0.875, accuracy: 1e-9)

        clock.begin()
        XCTAssertEqual(clock.stepSeconds, [])
        XCTAssertEqual(clock.textEncodeSeconds, 0)
    }

    func testErrorsInsideTextEncodingStillCount() {
        struct Boom: Error {}
        let time = FakeTime()
        let clock = StageClock(now: { time.now })
        XCTAssertThrowsError(try clock.timeTextEncode { time.now += 0.4; throw Boom() })
        XCTAssertEqual(clock.textEncodeSeconds, 0.4, accuracy: 1e-9)
    }

    func testMonotonicClockMoves() {
        let a = StageClock.monotonicSeconds()
        var x = 0.0
        for i in 0..<100_000 { x += Double(i) }
        XCTAssertGreaterThan(x, 0)
        XCTAssertGreaterThanOrEqual(StageClock.monotonicSeconds(), a)
    }
}

final class MemoryTests: XCTestCase {
    func testTrackerKeepsTheMaximaOfSamplesAndKernelPeaks() {
        var samples = [
            MemorySample(residentBytes: 100 << 20, footprintBytes: 150 << 20),
            MemorySample(residentBytes: 300 << 20, footprintBytes: 120 << 20, peakFootprintBytes: 400 << 20),
            MemorySample(residentBytes: 50 << 20, footprintBytes: 60 << 20),
        ]
        let tracker = PeakMemoryTracker(probe: { samples.removeFirst() })
        tracker.record()
        tracker.record()
        XCTAssertEqual(tracker.peakResidentMB, 300)
        XCTAssertEqual(tracker.peakFootprintMB, 400)
        XCTAssertEqual(tracker.report.peakRSSMB, 300)
    }

    func testNoFootprintWhereTheOSHasNone() {
        let tracker = PeakMemoryTracker(probe: { MemorySample(residentBytes: 1 << 20) })
        XCTAssertNil(tracker.peakFootprintMB)
        XCTAssertEqual(tracker.peakResidentMB, 1)
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
