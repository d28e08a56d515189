// What Apple's Foundation has and swift-corelibs-foundation lacks, declared for type-checking the app on Linux
// (scripts/typecheck-engine.sh compiles this file into the app's target only). Signatures as in the iOS 18 SDK.
import Foundation

extension URL {
    public struct BookmarkCreationOptions: OptionSet, Sendable {
        public let rawValue: UInt
        public init(rawValue: UInt) { self.rawValue = rawValue }
        @available(iOS, unavailable)
        @available(macOS 10.7, *)
        public static var withSecurityScope: BookmarkCreationOptions { BookmarkCreationOptions(rawValue: 1 << 11) }
    }

    public struct BookmarkResolutionOptions: OptionSet, Sendable {
        public let rawValue: UInt
        public init(rawValue: UInt) { self.rawValue = rawValue }
        @available(iOS, unavailable)
        @available(macOS 10.7, *)
        public static var withSecurityScope: BookmarkResolutionOptions { BookmarkResolutionOptions(rawValue: 1 << 10) }
    }

    @available(iOS 4.0, macOS 10.6, *)
    public func bookmarkData(options: BookmarkCreationOptions = [], includingResourceValuesForKeys keys: Set<URLResourceKey>? = nil,
                             relativeTo url: URL? = nil) throws -> Data { Data() }

    @available(iOS 4.0, macOS 10.6, *)
    public init(resolvingBookmarkData data: Data, options: BookmarkResolutionOptions = [], relativeTo url: URL? = nil,
                bookmarkDataIsStale: inout Bool) throws {
        self.init(fileURLWithPath: "/")
    }
}

extension FileManager {
    @available(iOS 5.0, macOS 10.7, *)
    public func startDownloadingUbiquitousItem(at url: URL) throws {}
}

extension URL {
    @available(iOS 8.0, macOS 10.7, *)
    public func startAccessingSecurityScopedResource() -> Bool { true }
    @available(iOS 8.0, macOS 10.7, *)
    public func stopAccessingSecurityScopedResource() {}
}
