import Foundation
import PocketSDKit

/// The app's folders.
enum AppPaths {
    /// Documents: the user's side (visible in Files and Finder): a copied-in bundle and every run's PNG + JSON.
    static var documents: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    }

    /// Application Support/PocketSD: the app's own files (compiled models, the run journal), not shown to the user.
    static var support: URL {
        FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0].appendingPathComponent("PocketSD")
    }

    static var compiledModels: URL { support.appendingPathComponent("Compiled") }
    static var reports: URL { documents }
    static var journal: RunJournal { RunJournal(folder: support) }

    /// A bundle copied into Documents (Finder / Files) must not go to iCloud backup: gigabytes the user can copy
    /// again. Marked at every launch, since a copy made since the last launch is not marked yet.
    static func excludeBundleFromBackup() {
        let bundle = documents.appendingPathComponent("Resources")
        guard FileManager.default.fileExists(atPath: bundle.path) else { return }
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        var url = bundle
        try? url.setResourceValues(values)
    }
}

/// Keeps the bundle folder the user picked with the file importer, across launches.
///
/// A folder from the document picker may only be read while its security scope is open, and its URL alone does not
/// reopen it at the next launch: a bookmark does. The bookmark is stored in UserDefaults and resolved at launch; a
/// stale one (the folder moved) is made again from the resolved URL.
@MainActor
final class BundleBookmark {
    private let key = "pocketsd.bundleBookmark"
    /// The folder whose security scope this object opened (nil when none was needed: see `FolderAccess`).
    private var scoped: URL?

    /// Starts access to `url` (picked just now) and remembers it for the next launches. A URL that needs no scope
    /// (the app's own Documents) is fine: only a folder that cannot be read is refused.
    func remember(_ url: URL) throws {
        stopAccess()
        let opened = try FolderAccess.open(url, startScope: { $0.startAccessingSecurityScopedResource() })
        scoped = opened.scoped ? url : nil
        UserDefaults.standard.set(try Self.bookmark(url), forKey: key)
    }

    /// The folder picked at an earlier launch, with its access started, or nil.
    func restore() -> URL? {
        guard let data = UserDefaults.standard.data(forKey: key) else { return nil }
        var stale = false
        guard let url = try? URL(resolvingBookmarkData: data, options: Self.resolutionOptions, relativeTo: nil, bookmarkDataIsStale: &stale),
              let opened = try? FolderAccess.open(url, startScope: { $0.startAccessingSecurityScopedResource() }) else {
            forget()
            return nil
        }
        scoped = opened.scoped ? url : nil
        if stale, let fresh = try? Self.bookmark(url) { UserDefaults.standard.set(fresh, forKey: key) }
        return url
    }

    func forget() {
        stopAccess()
        UserDefaults.standard.removeObject(forKey: key)
    }

    private func stopAccess() {
        scoped?.stopAccessingSecurityScopedResource()
        scoped = nil
    }

    // iOS bookmarks of document-picker URLs carry their scope implicitly; the macOS sandbox needs .withSecurityScope.
    private static func bookmark(_ url: URL) throws -> Data {
        #if os(macOS)
        return try url.bookmarkData(options: [.withSecurityScope], includingResourceValuesForKeys: nil, relativeTo: nil)
        #else
        return try url.bookmarkData(options: [], includingResourceValuesForKeys: nil, relativeTo: nil)
        #endif
    }

    private static var resolutionOptions: URL.BookmarkResolutionOptions {
        #if os(macOS)
        return [.withSecurityScope]
        #else
        return []
        #endif
    }
}

/// Files of a bundle that iCloud Drive has not downloaded: asks for them and waits.
enum ICloudDownload {
    /// Requests every placeholder under `folder` and waits until none is left (or `timeout` passes), telling
    /// `progress` how many are still missing. Cancelling the task stops the wait (the downloads go on).
    static func fetch(_ folder: URL, timeout: TimeInterval = 30 * 60, progress: @Sendable (Int) -> Void) async throws {
        var pending = ICloudFiles.placeholders(under: folder)
        guard !pending.isEmpty else { return }
        for url in pending { try FileManager.default.startDownloadingUbiquitousItem(at: url) }
        let start = Date()
        while !pending.isEmpty {
            progress(pending.count)
            try Task.checkCancellation()
            if Date().timeIntervalSince(start) > timeout {
                throw PocketSDError.badInput("\(pending.count) file(s) of the bundle are still downloading from iCloud; try again when Files shows them downloaded")
            }
            try await Task.sleep(nanoseconds: 1_000_000_000)
            pending = ICloudFiles.placeholders(under: folder)
        }
        progress(0)
    }
}
