#if canImport(CoreML)
import CoreML
import Foundation

/// Compiles a bundle's `.mlpackage` files on the device, once, into the app's cache of compiled models.
///
/// `MLModel.compileModel(at:)` works on iOS as on macOS; it writes into a temporary folder the OS may clean, so the
/// result is moved into `CompiledModelCache.root` (Application Support) and excluded from backup (it can be made
/// again from the bundle). Compiling gives no progress of its own: the caller learns when each model starts and
/// ends, and shows the elapsed time.
@available(iOS 17.0, macOS 14.0, *)
public enum ModelCompiler {
    public enum Event: Sendable {
        case started(String)
        case finished(String, seconds: Double)
        /// Already compiled earlier (found in the cache).
        case cached(String)
    }

    /// Compiled URLs for every component of `layout.needsCompile`, compiling those the cache lacks.
    /// Cancelling the task stops before the next model (a compile in progress runs to its end).
    public static func compileMissing(layout: BundleLayout, resources: URL, manifest: BundleManifest, cache: CompiledModelCache,
                                      onEvent: @Sendable (Event) -> Void) async throws -> (urls: [String: URL], seconds: [String: Double]) {
        var urls: [String: URL] = [:]
        var seconds: [String: Double] = [:]
        for component in layout.needsCompile {
            try Task.checkCancellation()
            let package = layout.modelURL(component, in: resources)
            let target = cache.compiledURL(component: component, package: package, manifest: manifest)
            if cache.isCompiled(target) {
                onEvent(.cached(component))
            } else {
                onEvent(.started(component))
                let start = RunTimer.monotonicSeconds()
                let temporary = try await MLModel.compileModel(at: package)
                try FileManager.default.createDirectory(at: cache.root, withIntermediateDirectories: true)
                try? FileManager.default.removeItem(at: target)
                try FileManager.default.moveItem(at: temporary, to: target)
                var values = URLResourceValues()
                values.isExcludedFromBackup = true
                var excluded = target
                try excluded.setResourceValues(values)
                let elapsed = RunTimer.monotonicSeconds() - start
                seconds[component] = elapsed
                onEvent(.finished(component, seconds: elapsed))
            }
            urls[component] = target
        }
        return (urls, seconds)
    }
}
#endif
