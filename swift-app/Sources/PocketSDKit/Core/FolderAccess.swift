import Foundation

/// Opening a folder the user picked (the file importer, or a bookmark at the next launch).
///
/// `startAccessingSecurityScopedResource()` returns false for a URL that carries no security scope — the app's
/// own Documents (a bundle copied in with Finder), or a folder inside one whose scope is open already — and such a
/// folder is readable without one. So false is not a refusal: the folder is refused only when it then cannot be
/// read. The scope is closed later only if it was opened (an unbalanced stop is a programming error to the OS).
public enum FolderAccess {
    public struct Opened: Equatable, Sendable {
        public let url: URL
        /// A scope was opened: `stopAccessingSecurityScopedResource()` is owed when the folder is let go.
        public let scoped: Bool
    }

    /// `startScope`: the platform's `startAccessingSecurityScopedResource`; `isReadable`: can the folder be listed.
    public static func open(_ url: URL, startScope: (URL) -> Bool, isReadable: (URL) -> Bool = canList) throws -> Opened {
        let scoped = startScope(url)
        guard scoped || isReadable(url) else {
            throw PocketSDError.badInput("the app was not given access to \(url.lastPathComponent); choose the folder again")
        }
        return Opened(url: url, scoped: scoped)
    }

    public static func canList(_ url: URL) -> Bool {
        (try? FileManager.default.contentsOfDirectory(atPath: url.path)) != nil
    }
}
