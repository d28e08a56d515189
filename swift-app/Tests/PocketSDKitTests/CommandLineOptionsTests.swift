import XCTest
@testable import PocketSDKit

final class CommandLineOptionsTests: XCTestCase {
    func generate(_ args: [String]) throws -> GenerateOptions {
        guard case .generate(let options) = try CommandLineOptions.parse(["generate"] + args) else {
            XCTFail("not a generate command"); throw PocketSDError.badInput("")
        }
        return options
    }

    func testEveryGenerateFlag() throws {
        let o = try generate([
            "a red circle", "--resources", "B/Resources", "--steps", "12", "--guidance=6.5", "--seed", "4294967295",
            "--negative", "blurry", "--scheduler", "euler", "--domain", "logo", "--compute-units", "cpu_and_ne",
            "--size", "128x128", "--image", "in.png", "--strength", "0.6", "--low-memory", "--out", "x/y.png",
            "--function", "poster", "--domains", "d.json", "--backend", "coreml", "--mask", "m.png",
            "--controlnet", "Edges", "--controlnet-scale", "0.7", "--control-guidance-start", "0.25", "--control-guidance-end=0.75",
        ])
        XCTAssertEqual(o.request.prompt, "a red circle")
        XCTAssertEqual(o.resources, "B/Resources")
        XCTAssertEqual(o.request.steps, 12)
        XCTAssertEqual(o.request.guidance, 6.5)
        XCTAssertEqual(o.request.seed, UInt32.max)
        XCTAssertEqual(o.request.negativePrompt, "blurry")
        XCTAssertEqual(o.request.scheduler, "euler")
        XCTAssertEqual(o.request.domain, "logo")
        XCTAssertEqual(o.request.computeUnits, .cpuAndNeuralEngine)
        XCTAssertEqual(o.request.size?.width, 128)
        XCTAssertEqual(o.request.imagePath, "in.png")
        XCTAssertEqual(o.request.strength, 0.6)
        XCTAssertTrue(o.request.lowMemory)
        XCTAssertEqual(o.request.unetFunction, "poster")
        XCTAssertEqual(o.domainsFile, "d.json")
        XCTAssertEqual(o.outputPath(seed: 1), "x/y.png")
        XCTAssertEqual(o.reportPath(seed: 1), "x/y.json")
        XCTAssertEqual(o.request.maskPath, "m.png")
        XCTAssertEqual(o.request.controlNet, "Edges")
        XCTAssertEqual(o.request.controlScale, 0.7)
        XCTAssertEqual(o.request.controlGuidanceStart, 0.25)
        XCTAssertEqual(o.request.controlGuidanceEnd, 0.75)
        XCTAssertEqual(o.count, 1)
    }

    func testCountAppendsTheSeedAsThePythonCLIDoes() throws {
        let o = try generate(["p", "--resources", "R", "--count", "3", "--out", "out/pic.png", "--report", "r/rep.json"])
        XCTAssertEqual(o.count, 3)
        XCTAssertEqual(o.outputPath(seed: 7), "out/pic-7.png")
        XCTAssertEqual(o.reportPath(seed: 7), "r/rep-7.json")
        let plain = try generate(["p", "--resources", "R", "--count", "2"])
        XCTAssertEqual(plain.outputPath(seed: 4), "pocketsd-4.png")
        XCTAssertEqual(plain.reportPath(seed: 4), "pocketsd-4.json")
    }

    func testDefaultPathsFollowTheSeed() throws {
        let o = try generate(["p", "--resources", "R"])
        XCTAssertEqual(o.outputPath(seed: 9), "pocketsd-9.png")
        XCTAssertEqual(o.reportPath(seed: 9), "pocketsd-9.json")
        var withReport = o
        withReport.report = "r.json"
        XCTAssertEqual(withReport.reportPath(seed: 9), "r.json")
    }

    func testBadInputGetsOneLine() {
        let cases: [([String], String)] = [
            (["generate", "--resources", "R"], "say what to draw"),
            (["generate", "p"], "--resources DIR is required"),
            (["generate", "p", "q", "--resources", "R"], "one prompt"),
            (["generate", "p", "--resources", "R", "--steps", "many"], "whole number"),
            (["generate", "p", "--resources", "R", "--seed", "-1"], "--seed"),
            (["generate", "p", "--resources", "R", "--compute-units", "gpu"], "cpu_and_ne"),
            (["generate", "p", "--resources", "R", "--size", "100x100"], "multiples of 8"),
            (["generate", "p", "--resources", "R", "--scheduler", "lms"], "unknown scheduler"),
            (["generate", "p", "--resources", "R", "--lora", "a.safetensors"], "LoRAs come in the bundle"),
            (["generate", "p", "--resources", "R", "--count", "0"], "--count"),
            (["generate", "p", "--resources", "R", "--scheduler", "pndm"], "euler, dpmpp2m, ddim"),
            (["generate", "p", "--resources", "R", "--backend", "torch"], "Core ML bundles only"),
            (["generate", "p", "--resources"], "needs a value"),
            (["generate", "p", "--resources", "R", "--wat"], "unknown option --wat"),
            (["paint"], "unknown command"),
            (["info"], "one bundle folder"),
            (["domains", "--verbose"], "unknown option"),
        ]
        for (args, fragment) in cases {
            XCTAssertThrowsError(try CommandLineOptions.parse(args), "\(args)") { error in
                guard let e = error as? PocketSDError else { return XCTFail("\(args): \(error) is not a PocketSDError") }
                XCTAssertTrue(e.description.contains(fragment), "\(args): \(e.description)")
                XCTAssertFalse(e.description.contains("\n"), "one line: \(e.description)")
                XCTAssertEqual(e.exitCode, 2)
            }
        }
    }

    func testOtherCommands() throws {
        XCTAssertEqual(try CommandLineOptions.parse([]), .help)
        XCTAssertEqual(try CommandLineOptions.parse(["--help"]), .help)
        XCTAssertEqual(try CommandLineOptions.parse(["--version"]), .version)
        XCTAssertEqual(try CommandLineOptions.parse(["domains", "--json"]), .domains(file: nil, json: true))
        XCTAssertEqual(try CommandLineOptions.parse(["info", "B"]), .info(path: "B"))
    }

    func testAPromptStartingWithDashesAfterTheSeparator() throws {
        let o = try generate(["--resources", "R", "--", "--weird prompt"])
        XCTAssertEqual(o.request.prompt, "--weird prompt")
    }
}
