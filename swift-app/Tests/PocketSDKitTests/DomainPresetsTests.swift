import XCTest
@testable import PocketSDKit

final class DomainPresetsTests: XCTestCase {
    /// The repository root, from this file's path (Tests/PocketSDKitTests/ → swift-app/ → repo).
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func testBundledCatalogDecodesAndEveryTemplateHasOnePlaceholder() throws {
        let catalog = try DomainCatalog.bundled()
        XCTAssertGreaterThanOrEqual(catalog.domains.count, 6, "the issue asks for at least six presets")
        for preset in catalog.domains {
            XCTAssertEqual(preset.promptTemplate.components(separatedBy: "{prompt}").count, 2, preset.name)
            XCTAssertGreaterThan(preset.steps, 0, preset.name)
            XCTAssertNoThrow(try SchedulerKind.resolve(preset.scheduler), preset.name)
        }
    }

    /// The package carries a copy of python/pocketsd/data/domains.json (`make sync-domains`); it must not drift.
    func testBundledCopyMatchesThePythonFile() throws {
        let python = Self.repoRoot.appendingPathComponent("python/pocketsd/data/domains.json")
        guard FileManager.default.fileExists(atPath: python.path) else {
            throw XCTSkip("not inside the PocketSD repository")
        }
        let bundled = try XCTUnwrap(Bundle.module.url(forResource: "domains", withExtension: "json"))
        XCTAssertEqual(try Data(contentsOf: bundled), try Data(contentsOf: python),
                       "swift-app's domains.json differs from the Python one: run `make sync-domains` in swift-app/")
    }

    func testExpansionPutsTheUserWordsInPlaceOfThePlaceholder() throws {
        let preset = DomainPreset(name: "x", description: "", promptTemplate: "{prompt}, studio light",
                                  negativePrompt: "blurry", steps: 10, guidance: 4, scheduler: "euler")
        XCTAssertEqual(preset.expand("  a red mug "), "a red mug, studio light")
        // Braces in the user's prompt are kept as they are (no format-string expansion).
        XCTAssertEqual(preset.expand("a {weird} mug"), "a {weird} mug, studio light")
    }

    func testLoraStemNamesTheUnetFunction() throws {
        var preset = DomainPreset(name: "poster-style", description: "", promptTemplate: "{prompt}", negativePrompt: "",
                                  steps: 20, guidance: 5, scheduler: "euler", lora: .init(file: "loras/poster.safetensors", scale: 1))
        XCTAssertEqual(preset.loraStem, "poster")
        preset.lora = nil
        XCTAssertNil(preset.loraStem)
    }

    func testUnknownDomainListsTheKnownOnes() throws {
        let catalog = try DomainCatalog.bundled()
        XCTAssertThrowsError(try catalog.preset(named: "nope")) { error in
            let message = String(describing: error)
            XCTAssertTrue(message.contains("unknown domain"), message)
            for name in catalog.names { XCTAssertTrue(message.contains(name), "\(name) missing from: \(message)") }
        }
    }

    func testMalformedCatalogsAreRefusedWithOneLine() {
        let twoPlaceholders = #"{"domains": [{"name": "a", "description": "", "prompt_template": "{prompt} {prompt}", "negative_prompt": "", "steps": 1, "guidance": 1, "scheduler": "euler", "lora": null}]}"#
        XCTAssertThrowsError(try DomainCatalog.decode(Data(twoPlaceholders.utf8))) { error in
            XCTAssertEqual(error as? PocketSDError,
                           .badInput("domain \"a\": prompt_template must contain {prompt} exactly once (found 2)"))
        }
        XCTAssertThrowsError(try DomainCatalog.decode(Data("[1, 2]".utf8)))
        let duplicate = #"{"domains": [{"name": "a", "description": "", "prompt_template": "{prompt}", "negative_prompt": "", "steps": 1, "guidance": 1, "scheduler": "euler"}, {"name": "a", "description": "", "prompt_template": "{prompt}", "negative_prompt": "", "steps": 1, "guidance": 1, "scheduler": "euler"}]}"#
        XCTAssertThrowsError(try DomainCatalog.decode(Data(duplicate.utf8)))
    }

    func testSwiftVersionMatchesThePythonPackage() throws {
        let initFile = Self.repoRoot.appendingPathComponent("python/pocketsd/__init__.py")
        guard let text = try? String(contentsOf: initFile, encoding: .utf8) else { throw XCTSkip("not inside the repository") }
        XCTAssertTrue(text.contains("__version__ = \"\(PocketSDKitInfo.version)\""),
                      "PocketSDKitInfo.version (\(PocketSDKitInfo.version)) differs from python/pocketsd/__init__.py")
    }
}
