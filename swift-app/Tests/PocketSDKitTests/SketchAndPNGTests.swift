import XCTest
@testable import PocketSDKit

final class SketchCleanerTests: XCTestCase {
    /// A square outline, 2 px wide, drawn procedurally: dark on light, or light on dark.
    func squareOutline(size: Int = 64, inverted: Bool = false) -> GrayImage {
        let (paper, ink): (UInt8, UInt8) = inverted ? (10, 240) : (250, 5)
        var image = GrayImage(width: size, height: size, fill: paper)
        for y in 16..<48 {
            for x in 16..<48 where x < 18 || x >= 46 || y < 18 || y >= 46 {
                image.pixels[y * size + x] = ink
            }
        }
        return image
    }

    func testAnOutlinedSquareBecomesAFilledSquareInThePromptsColors() throws {
        let result = try SketchCleaner.clean(squareOutline(), prompt: "a blue square on a black background")
        let w = 64
        XCTAssertTrue(result.region[32 * w + 32], "the inside of the outline is filled")
        XCTAssertFalse(result.region[4 * w + 4], "the paper outside stays background")
        XCTAssertFalse(result.lines[32 * w + 32], "the inside is not a stroke")
        let center = Array(result.start.pixels[(3 * (32 * w + 32))..<(3 * (32 * w + 32) + 3)])
        let corner = Array(result.start.pixels[(3 * (4 * w + 4))..<(3 * (4 * w + 4) + 3)])
        XCTAssertEqual(center, [40, 80, 220])   // the contract's blue
        XCTAssertEqual(corner, [20, 20, 20])    // the contract's black background
        XCTAssertTrue(result.notes.isEmpty)
        // The filled area is about the square's: 32×32 plus the pen's thickening.
        let filled = result.region.filter { $0 }.count
        XCTAssertGreaterThan(filled, 30 * 30)
        XCTAssertLessThan(filled, 38 * 38)
    }

    func testLightOnDarkDrawingsGiveTheSameShape() throws {
        let dark = try SketchCleaner.clean(squareOutline(), prompt: "a red square")
        let light = try SketchCleaner.clean(squareOutline(inverted: true), prompt: "a red square")
        XCTAssertEqual(dark.region, light.region)
    }

    func testOpenStrokesAreKeptAsTheShape() throws {
        var image = GrayImage(width: 64, height: 64, fill: 255)
        for x in 10..<54 { image.pixels[32 * 64 + x] = 0 }   // a single line
        let result = try SketchCleaner.clean(image, prompt: "x")
        XCTAssertEqual(result.notes.count, 1)
        XCTAssertTrue(result.region[32 * 64 + 30])
    }

    func testABlankPageIsRefused() {
        XCTAssertThrowsError(try SketchCleaner.clean(GrayImage(width: 32, height: 32, fill: 200), prompt: "x")) { error in
            XCTAssertTrue(String(describing: error).contains("blank"), "\(error)")
        }
    }

    func testOtsuSplitsTwoLevels() {
        let pixels = [UInt8](repeating: 20, count: 50) + [UInt8](repeating: 220, count: 50)
        let t = SketchCleaner.otsuThreshold(pixels)
        XCTAssertGreaterThan(t, 20)
        XCTAssertLessThan(t, 220)
    }

    func testPromptColors() {
        let (object, background) = PromptColors.colors(in: "A Purple triangle on a gray background, at the top")
        XCTAssertTrue(object == (140, 60, 190))
        XCTAssertTrue(background == (128, 128, 128))
        let (o2, b2) = PromptColors.colors(in: "something")
        XCTAssertTrue(o2 == PromptColors.defaultObject && b2 == PromptColors.defaultBackground)
    }
}

final class PNGTextTests: XCTestCase {
    /// A 2×2 red PNG written by Pillow.
    static let tinyPNG = Data(base64Encoded: "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")!
    let png = PNGTextTests.tinyPNG

    func testCRC32MatchesTheKnownValue() {
        XCTAssertEqual(PNGText.crc32(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(PNGText.crc32(Array("IEND".utf8)), 0xAE42_6082)
    }

    func testInsertedChunksSitBeforeIENDAndReadBack() throws {
        let out = try PNGText.insert([("prompt", "a red circle"), ("pocketsd:seed", "5"), ("", "skipped")], into: png)
        let chunks = PNGText.chunkOffsets([UInt8](out)).map(\.type)
        XCTAssertEqual(chunks.first, "IHDR")
        XCTAssertEqual(chunks.last, "IEND")
        XCTAssertEqual(chunks.filter { $0 == "tEXt" }.count, 2)
        XCTAssertEqual(PNGText.read(out), ["prompt": "a red circle", "pocketsd:seed": "5"])
        // Every chunk's CRC is right (a reader would reject the file otherwise).
        let bytes = [UInt8](out)
        for (_, offset) in PNGText.chunkOffsets(bytes) {
            let length = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            let body = Array(bytes[(offset + 4)..<(offset + 8 + length)])
            let stored = bytes[(offset + 8 + length)..<(offset + 12 + length)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            XCTAssertEqual(PNGText.crc32(body), stored)
        }
    }

    func testNotAPNGIsRefused() {
        XCTAssertThrowsError(try PNGText.insert([("a", "b")], into: Data("hello world, not a png".utf8)))
    }

    func testNonLatin1CharactersBecomeQuestionMarks() {
        XCTAssertEqual(PNGText.latin1("café ☕"), Array("café ?".unicodeScalars.map { UInt8($0.value) }))
    }
}
