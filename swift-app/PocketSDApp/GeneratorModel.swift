import CoreGraphics
import Foundation
import PocketSDKit
import SwiftUI

/// The app's state: the request being edited, progress, the last image and its numbers.
@MainActor
final class GeneratorModel: ObservableObject {
    enum InputMode: String, CaseIterable, Identifiable {
        case text = "Text"
        case photo = "Photo"
        case sketch = "Sketch"
        var id: String { rawValue }
    }

    // The request
    @Published var prompt = "a red circle on a white background"
    @Published var domainName = ""            // "" = no preset
    @Published var inputMode = InputMode.text
    @Published var photo: CGImage?
    @Published var strength = ResolvedRequest.defaultImageStrength
    @Published var seed: UInt32 = 1
    @Published var randomSeed = false
    @Published var computeUnits = ComputeUnitsChoice.all
    /// Apple's reduceMemory: on by default on iPhone (see README, "Memory on iPhone").
    @Published var reduceMemory = PocketSDEngine.defaultReduceMemory

    // The outcome
    @Published private(set) var bundleURL: URL?
    @Published private(set) var bundleSummary = "no bundle"
    @Published private(set) var step = 0
    @Published private(set) var stepCount = 0
    @Published private(set) var image: CGImage?
    @Published private(set) var report: GenerationReport?
    @Published private(set) var status = ""
    @Published private(set) var isRunning = false
    @Published var errorMessage: String?

    let catalog: DomainCatalog?
    private let worker = GenerationWorker()
    private var cancelFlag = CancelFlag()
    private var securityScopedURL: URL?

    init() {
        do {
            catalog = try DomainCatalog.bundled()
        } catch {
            catalog = nil
            errorMessage = "domains.json is missing from the app: \(error)"
        }
        if let url = Self.defaultBundleURL() { Task { await openBundle(url) } }
    }

    var presets: [DomainPreset] { catalog?.domains ?? [] }

    /// Where a bundle is looked for at launch: Documents/Resources (copied with Finder / the Files app),
    /// then the folder the Xcode project copies into the app (`make app-resources`).
    static func defaultBundleURL() -> URL? {
        let fm = FileManager.default
        var candidates: [URL] = []
        if let documents = fm.urls(for: .documentDirectory, in: .userDomainMask).first {
            candidates.append(documents.appendingPathComponent("Resources"))
        }
        if let resources = Bundle.main.resourceURL {
            candidates.append(resources.appendingPathComponent("PocketSDBundle"))
        }
        return candidates.first { fm.fileExists(atPath: $0.path) }
    }

    /// A bundle folder chosen with the file importer (security-scoped on iOS and in the macOS sandbox).
    func chooseBundle(_ url: URL) async {
        securityScopedURL?.stopAccessingSecurityScopedResource()
        securityScopedURL = url.startAccessingSecurityScopedResource() ? url : nil
        await openBundle(url)
    }

    func openBundle(_ url: URL) async {
        do {
            let manifest = try await worker.open(url)
            bundleURL = url
            var summary = "\(manifest.imageSize.width)×\(manifest.imageSize.height)"
            if let bits = manifest.bitsPerWeight { summary += String(format: ", %.2f bits/weight", bits) }
            if !manifest.unetFunctions.isEmpty { summary += ", styles: " + manifest.unetFunctions.joined(separator: ", ") }
            bundleSummary = summary
        } catch {
            bundleURL = nil
            bundleSummary = "no bundle"
            errorMessage = String(describing: error)
        }
    }

    func generate(sketch: CGImage?) {
        guard !isRunning else { return }
        guard bundleURL != nil else {
            errorMessage = "Choose a bundle first: the Resources folder of `pocketsd convert`, compiled on a Mac."
            return
        }
        var request = GenerationRequest(prompt: prompt)
        request.domain = domainName.isEmpty ? nil : domainName
        if randomSeed { seed = UInt32.random(in: 0...UInt32.max) }
        request.seed = seed
        request.computeUnits = computeUnits
        let photo = inputMode == .photo ? self.photo : nil
        let sketch = inputMode == .sketch ? sketch : nil
        if inputMode == .photo && photo == nil {
            errorMessage = "Pick a photo first, or switch the input to Text."
            return
        }
        if photo != nil || sketch != nil {
            // The worker decodes nothing from paths: mark the kind of start so `resolve` checks strength.
            request.imagePath = photo != nil ? "photo" : nil
            request.sketchPath = sketch != nil ? "sketch" : nil
            request.strength = strength
        }

        isRunning = true
        step = 0
        stepCount = 0
        status = "starting…"
        cancelFlag = CancelFlag()
        let flag = cancelFlag
        let catalog = self.catalog
        let reduceMemory = self.reduceMemory
        Task {
            do {
                let result = try await worker.generate(
                    request, catalog: catalog, photo: photo, sketch: sketch, reduceMemory: reduceMemory, cancel: flag,
                    onStatus: { line in Task { @MainActor in self.status = line } },
                    onStep: { update in Task { @MainActor in
                        self.step = update.step
                        self.stepCount = update.stepCount
                        self.status = "step \(update.step)/\(update.stepCount)"
                    } })
                image = result.image
                report = result.report
                status = "done"
            } catch is CancellationError {
                status = "cancelled"
            } catch {
                errorMessage = String(describing: error)
                status = ""
            }
            isRunning = false
        }
    }

    func cancel() {
        cancelFlag.cancel()
    }

    func didReceiveMemoryWarning() {
        guard !isRunning else { return }
        Task { await worker.unload() }
    }
}
