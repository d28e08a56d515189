import Foundation

/// Where each run's PNG and JSON report go, and writing them as a pair.
///
/// The app writes both into its Documents folder (visible in the Files app and in Finder), named by time and seed
/// so runs never overwrite each other; the Share button shares these two files, so the PNG keeps its text metadata
/// (sharing an in-memory image would re-encode it without the chunks).
public enum ReportFiles {
    public struct Pair: Equatable, Sendable {
        public var png: URL
        public var json: URL
    }

    static let stamp: DateFormatter = {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        return formatter
    }()

    /// `folder/pocketsd-<UTC time>-seed<seed>.png` and `.json`, with `-2`, `-3` … when that name is taken.
    public static func names(in folder: URL, date: Date, seed: UInt32) -> Pair {
        let base = "pocketsd-\(stamp.string(from: date))-seed\(seed)"
        var candidate = base
        var n = 2
        while FileManager.default.fileExists(atPath: folder.appendingPathComponent(candidate + ".png").path)
                || FileManager.default.fileExists(atPath: folder.appendingPathComponent(candidate + ".json").path) {
            candidate = "\(base)-\(n)"
            n += 1
        }
        return Pair(png: folder.appendingPathComponent(candidate + ".png"), json: folder.appendingPathComponent(candidate + ".json"))
    }

    /// Writes the PNG (already carrying its text chunks) and the report, each whole (temporary file + rename); if
    /// the report cannot be written the PNG is removed again, so no image is left without its report.
    public static func write(png: Data, report: GenerationReport, to pair: Pair) throws {
        for url in [pair.png, pair.json] {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        }
        try png.write(to: pair.png, options: .atomic)
        do {
            try report.encoded().write(to: pair.json, options: .atomic)
        } catch {
            try? FileManager.default.removeItem(at: pair.png)
            throw error
        }
    }

    /// The pairs in `folder`, newest first (a PNG without its report is left out).
    public static func list(in folder: URL) -> [Pair] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.filter { $0.hasPrefix("pocketsd-") && $0.hasSuffix(".png") }.sorted(by: >).compactMap { name in
            let png = folder.appendingPathComponent(name)
            let json = png.deletingPathExtension().appendingPathExtension("json")
            return FileManager.default.fileExists(atPath: json.path) ? Pair(png: png, json: json) : nil
        }
    }
}
