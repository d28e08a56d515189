import Foundation

/// Files of a bundle that iCloud Drive has not downloaded yet. Two forms: the older iCloud Drive keeps a hidden
/// placeholder `.Name.icloud` next to where `Name` will be; the FileProvider-based iCloud Drive (iOS 16+, macOS 14+)
/// lists the file under its real name before its data is there, and only its resource values tell
/// (`ubiquitousItemDownloadingStatus` is `.notDownloaded`). A bundle picked from iCloud Drive can be made of either;
/// the app asks for the downloads and waits.
public enum ICloudFiles {
    /// iCloud's word on one file (`URLUbiquitousItemDownloadingStatus`): nil for a file that is not in iCloud.
    public enum Status: Equatable, Sendable {
        /// Listed, but its data is not on this device.
        case notDownloaded
        /// On this device, though iCloud has a newer version (readable: it is what the bundle had).
        case downloaded
        /// On this device and current.
        case current
    }

    /// The file system's answer for `url` (Apple platforms; nil elsewhere, where nothing is in iCloud).
    public static func systemStatus(_ url: URL) -> Status? {
        #if canImport(Darwin)
        guard let values = try? url.resourceValues(forKeys: [.isUbiquitousItemKey, .ubiquitousItemDownloadingStatusKey]),
              values.isUbiquitousItem == true, let status = values.ubiquitousItemDownloadingStatus else { return nil }
        switch status {
        case .current: return .current
        case .downloaded: return .downloaded
        default: return .notDownloaded  // .notDownloaded, and any status a later OS adds: not known to be readable
        }
        #else
        return nil
        #endif
    }

    /// ".TextEncoder.mlpackage.icloud" → "TextEncoder.mlpackage"; nil for any other name.
    public static func realName(ofPlaceholder name: String) -> String? {
        guard name.hasPrefix("."), name.hasSuffix(".icloud"), name.count > ".icloud".count + 1 else { return nil }
        return String(name.dropFirst().dropLast(".icloud".count))
    }

    /// Every file under `folder` (hidden files included) whose data is not on the device, as the URL the real file
    /// has or will have: `.Name.icloud` placeholders by name, and files `status` reports `.notDownloaded`.
    public static func placeholders(under folder: URL, status: (URL) -> Status? = systemStatus) -> [URL] {
        #if canImport(Darwin)
        let keys: [URLResourceKey]? = [.isUbiquitousItemKey, .ubiquitousItemDownloadingStatusKey]  // fetched with the listing
        #else
        let keys: [URLResourceKey]? = nil
        #endif
        guard let walker = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: keys) else { return [] }
        var found = Set<String>()
        for case let url as URL in walker {
            if let real = realName(ofPlaceholder: url.lastPathComponent) {
                found.insert(url.deletingLastPathComponent().appendingPathComponent(real).standardizedFileURL.path)
            } else if status(url) == .notDownloaded {
                found.insert(url.standardizedFileURL.path)
            }
        }
        return found.sorted().map { URL(fileURLWithPath: $0) }
    }
}

/// Where the app keeps the models it compiled from a bundle's `.mlpackage` files.
///
/// `MLModel.compileModel(at:)` writes a compiled model to a temporary folder that the OS may delete; the app moves
/// it into Application Support (not Documents, so it is not shown to the user nor shared) and marks it excluded
/// from backup (it can be made again from the bundle). Each compiled model is named after its component and a
/// fingerprint of its source package — the package's sha256 from the manifest when it has one, else its path,
/// size and modification time — so a changed bundle compiles again and an unchanged one never does.
public struct CompiledModelCache: Sendable {
    public let root: URL

    public init(root: URL) {
        self.root = root
    }

    /// The compiled model's place for `component` of the bundle at `resources`.
    public func compiledURL(component: String, package: URL, manifest: BundleManifest) -> URL {
        let safe = component.replacingOccurrences(of: "/", with: "_")
        return root.appendingPathComponent("\(safe)-\(Self.fingerprint(component: component, package: package, manifest: manifest)).mlmodelc")
    }

    public func isCompiled(_ url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    /// Removes every compiled model (the app's "Remove compiled models" button).
    public func removeAll() throws {
        if FileManager.default.fileExists(atPath: root.path) { try FileManager.default.removeItem(at: root) }
    }

    /// Bytes used by the compiled models.
    public var bytes: Int { BundleLayout.folderBytes(root) }

    static func fingerprint(component: String, package: URL, manifest: BundleManifest) -> String {
        let relative = "Resources/\(component).mlpackage"
        if let digest = manifest.raw["components"]?[component]?["sha256"]?[relative]?.string
            ?? manifest.raw["components"]?[component]?["sha256"]?.object?.values.first?.string
            ?? manifest.raw["components"]?[component]?["sha256"]?.string {
            return String(digest.prefix(16))
        }
        let manifestEntry = package.appendingPathComponent("Manifest.json")
        let values = try? manifestEntry.resourceValues(forKeys: [.contentModificationDateKey])
        let stamp = values?.contentModificationDate?.timeIntervalSince1970 ?? 0
        let text = "\(package.standardizedFileURL.path)|\(BundleLayout.folderBytes(package))|\(stamp)"
        return String(format: "%016llx", fnv1a64(Array(text.utf8)))
    }

    /// FNV-1a, 64 bit: a fingerprint for file names, not a security measure (Foundation on Linux has no digests).
    static func fnv1a64(_ bytes: [UInt8]) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01B3
        }
        return hash
    }
}
