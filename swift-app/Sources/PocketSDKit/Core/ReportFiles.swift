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

    /// Rewrites the report of a pair written already (temporary file + rename, so a kill leaves the old report or
    /// the new one, never half of either), for what is added once the image is safe on disk: the compute plan,
    /// which loads each model again and cannot be cancelled. The PNG is not touched, and a pair whose PNG is gone
    /// (the user deleted it meanwhile) does not get its report back.
    public static func rewriteReport(_ report: GenerationReport, in pair: Pair) throws {
        guard FileManager.default.fileExists(atPath: pair.png.path) else {
            throw PocketSDError.badInput("\(pair.png.lastPathComponent) is gone; its report was not rewritten")
        }
        try report.encoded().write(to: pair.json, options: .atomic)
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
