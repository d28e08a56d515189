import Foundation

/// Adds `tEXt` chunks to an encoded PNG.
///
/// The contract wants the generation parameters in the PNG's text metadata under the keys the Python side
/// uses (`prompt`, `pocketsd:seed`, …). ImageIO only writes a fixed set of PNG keys (Title, Description, …),
/// so the app encodes the PNG with ImageIO and then inserts the chunks itself: a chunk is length, type,
/// data and a CRC-32, placed before `IEND`. Foundation has no CRC-32, hence the small table below.
public enum PNGText {
    static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// `png` with one `tEXt` chunk per entry inserted before `IEND`. Keys are 1–79 Latin-1 characters and
    /// values Latin-1 (tEXt's rule); characters outside Latin-1 become "?" (iTXt would be needed for them).
    public static func insert(_ entries: [(key: String, value: String)], into png: Data) throws -> Data {
        let bytes = [UInt8](png)
        guard bytes.count >= 8 + 12, Array(bytes[0..<8]) == signature else {
            throw PocketSDError.badInput("not a PNG")
        }
        var chunks: [UInt8] = []
        for (key, value) in entries {
            let keyBytes = latin1(key)
            guard (1...79).contains(keyBytes.count) else { continue }
            chunks += chunk(type: "tEXt", data: keyBytes + [0] + latin1(value))
        }
        guard let iend = chunkOffsets(bytes).first(where: { $0.type == "IEND" })?.offset else {
            throw PocketSDError.badInput("PNG has no IEND chunk")
        }
        return Data(Array(bytes[..<iend]) + chunks + Array(bytes[iend...]))
    }

    /// (type, offset) of every chunk, offset pointing at its length field.
    public static func chunkOffsets(_ bytes: [UInt8]) -> [(type: String, offset: Int)] {
        var result: [(String, Int)] = []
        var i = 8
        while i + 12 <= bytes.count {
            let length = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            let type = String(decoding: bytes[(i + 4)..<(i + 8)], as: UTF8.self)
            result.append((type, i))
            i += 12 + length
        }
        return result.map { (type: $0.0, offset: $0.1) }
    }

    /// The text entries of a PNG, for tests and `info`.
    public static func read(_ png: Data) -> [String: String] {
        let bytes = [UInt8](png)
        var out: [String: String] = [:]
        for (type, offset) in chunkOffsets(bytes) where type == "tEXt" {
            let length = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            let data = Array(bytes[(offset + 8)..<(offset + 8 + length)])
            guard let zero = data.firstIndex(of: 0) else { continue }
            out[String(data[..<zero].map { Character(Unicode.Scalar($0)) })] =
                String(data[(zero + 1)...].map { Character(Unicode.Scalar($0)) })
        }
        return out
    }

    static func chunk(type: String, data: [UInt8]) -> [UInt8] {
        let typeBytes = Array(type.utf8)
        let n = UInt32(data.count)
        let length: [UInt8] = [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        let crc = crc32(typeBytes + data)
        return length + typeBytes + data + [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)]
    }

    static func latin1(_ s: String) -> [UInt8] {
        s.unicodeScalars.map { $0.value < 256 ? UInt8($0.value) : UInt8(ascii: "?") }
    }

    private static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (ISO 3309, the one PNG and zlib use).
    public static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
