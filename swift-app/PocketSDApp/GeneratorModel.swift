import Combine
import CoreGraphics
import Foundation
import PocketSDKit

/// The app's state: the request being edited, loading and step progress, the last image, its numbers and files.
/// Kept free of SwiftUI so that `scripts/typecheck-engine.sh` can compile it on Linux against stand-ins.
@MainActor
final class GeneratorModel: ObservableObject {
    enum InputMode: String, CaseIterable, Identifiable {
        case text = "Text"
        case photo = "Photo"
        case sketch = "Sketch"
        /// Photo + painted mask: repaint where painted.
        case repaint = "Repaint"
        var id: String { rawValue }
    }

    // The request
    @Published var prompt = "a red circle on a white background"
    @Published var negativePrompt = ""
    @Published var domainName = "" {          // "" = no preset
        didSet { if domainName != oldValue { form.show(preset: presets.first { $0.name == domainName }) } }
    }
    /// Steps, guidance, scheduler and strength as shown, and which the user changed: only those are sent, so a
    /// preset's own values and the start's default strength apply as on the command line (see `SettingsForm`).
    @Published private(set) var form = SettingsForm()
    var steps: Int { get { form.steps } set { form.setSteps(newValue) } }
    var guidance: Double { get { form.guidance } set { form.setGuidance(newValue) } }
    var scheduler: SchedulerKind { get { form.scheduler } set { form.setScheduler(newValue) } }
    /// A multifunction UNet's function (a LoRA style); "" = the preset's or the bundle's default.
    @Published var style = ""
    @Published var controlNet = ""            // "" = none
    @Published var inputMode = InputMode.text {
        didSet { form.show(start: inputMode == .repaint ? .mask : inputMode == .sketch ? .sketch : inputMode == .photo ? .image : .text) }
    }
    @Published private(set) var photo: CGImage?
    var strength: Double { get { form.strength } set { form.setStrength(newValue) } }
    @Published var seed: UInt32 = 1
    @Published var randomSeed = false
    @Published var computeUnits = ComputeUnitsChoice.platformDefault
    @Published var lowMemory = PlatformDefaults.lowMemory
    /// The sketch canvas is being drawn on: the form must not scroll under the finger.
    @Published var isDrawing = false

    // The bundle
    @Published private(set) var bundle: GenerationWorker.BundleFacts?
    @Published private(set) var bundleName = "none"

    // Progress and outcome
    @Published private(set) var board = LoadingBoard()
    @Published private(set) var step = 0
    @Published private(set) var stepCount = 0
    @Published private(set) var runStarted: Date?
    @Published private(set) var image: CGImage?
    @Published private(set) var report: GenerationReport?
    @Published private(set) var files: ReportFiles.Pair?
    @Published private(set) var status = ""
    @Published private(set) var isRunning = false
    @Published var errorMessage: String?
    /// "The last run stopped without finishing…", once, at the launch after a kill.
    @Published var notice: String?

    let catalog: DomainCatalog?
    private let worker = GenerationWorker()
    private let bookmark = BundleBookmark()
    private let lifecycle = AppLifecycle()
    private var cancelFlag = CancelFlag()
    private var runTask: Task<Void, Never>?

    init() {
        var problem: String?
        do {
            catalog = try DomainCatalog.bundled()
        } catch {
            catalog = nil
            problem = ReadableError.sentence(error)
        }
        errorMessage = problem
        if let leftover = AppPaths.journal.takeLeftover() { notice = RunJournal.notice(for: leftover) }
        AppPaths.excludeBundleFromBackup()
        if let url = bookmark.restore() ?? Self.defaultBundleURL() {
            Task { await openBundle(url) }
        }
    }

    var presets: [DomainPreset] { catalog?.domains ?? [] }

    /// A bundle copied into Documents (Finder / Files app) or built into the app (`make app-resources`).
    static func defaultBundleURL() -> URL? {
        let candidates = [AppPaths.documents.appendingPathComponent("Resources"),
                          Bundle.main.resourceURL?.appendingPathComponent("PocketSDBundle")].compactMap { $0 }
        return candidates.first { FileManager.default.fileExists(atPath: $0.path) }
    }

    // MARK: the bundle

    /// A folder picked with the file importer: kept as a security-scoped bookmark for the next launches.
    func chooseBundle(_ url: URL) async {
        do {
            try bookmark.remember(url)
        } catch {
            errorMessage = ReadableError.sentence(error)
            return
        }
        await openBundle(url)
    }

    func openBundle(_ url: URL) async {
        do {
            let facts = try await worker.open(url)
            bundle = facts
            bundleName = facts.resources.deletingLastPathComponent().lastPathComponent + "/" + facts.resources.lastPathComponent
            if !facts.styles.contains(style) { style = "" }
            if !facts.controlNets.contains(controlNet) { controlNet = "" }
            board = LoadingBoard(models: facts.uncompiled)
            status = facts.pendingDownloads > 0 ? "\(facts.pendingDownloads) file(s) still in iCloud: they download before the first run"
                : facts.uncompiled.isEmpty ? "" : "the first run compiles \(facts.uncompiled.joined(separator: ", ")) for this device"
        } catch {
            bundle = nil
            bundleName = "none"
            errorMessage = ReadableError.sentence(error)
        }
    }

    func removeCompiledModels() {
        Task {
            do {
                try await worker.removeCompiledModels()
                if let url = bundle?.resources { await openBundle(url) }
            } catch {
                errorMessage = ReadableError.sentence(error)
            }
        }
    }

    // MARK: inputs

    /// Decodes a picked photo off the main actor, straight to at most twice the bundle's side.
    func loadPhoto(_ data: Data) {
        let side = 2 * max(bundle?.imageSize.width ?? 1024, bundle?.imageSize.height ?? 1024)
        Task {
            do {
                let decoded = try await Task.detached(priority: .userInitiated) {
                    try ImageFiles.load(data: data, maxPixelSize: side)
                }.value
                photo = decoded
            } catch {
                errorMessage = ReadableError.sentence(error)
            }
        }
    }

    // MARK: a run

    func generate(canvas: CGImage?) {
        guard !isRunning else { return }
        guard bundle != nil else {
            errorMessage = "Choose a bundle first: the folder `pocketsd convert` wrote (or its Resources folder)."
            return
        }
        var request = GenerationRequest(prompt: prompt)
        request.domain = domainName.isEmpty ? nil : domainName
        request.negativePrompt = negativePrompt.isEmpty ? nil : negativePrompt
        request.unetFunction = style.isEmpty ? nil : style
        if randomSeed { seed = UInt32.random(in: 0...UInt32.max) }
        request.seed = seed
        request.computeUnits = computeUnits
        request.lowMemory = lowMemory
        var photo: CGImage?, sketch: CGImage?, mask: CGImage?
        switch inputMode {
        case .text:
            break
        case .photo, .repaint:
            guard let picked = self.photo else {
                errorMessage = "Pick a photo first, or switch the input to Text."
                return
            }
            photo = picked
            request.imagePath = "photo"   // the worker decodes nothing from paths; this marks the kind of start
            if inputMode == .repaint {
                guard let canvas else {
                    errorMessage = "Paint over the part of the photo to repaint first."
                    return
                }
                mask = canvas
                request.maskPath = "painted mask"
            }
        case .sketch:
            guard let canvas else {
                errorMessage = "Draw a sketch first, or switch the input to Text."
                return
            }
            sketch = canvas
            request.sketchPath = "sketch"
        }
        if !controlNet.isEmpty, inputMode == .sketch || inputMode == .photo {
            request.controlNet = controlNet
        }
        form.fill(&request)   // after the start and the ControlNet are set: the strength depends on them

        isRunning = true
        step = 0
        stepCount = 0
        runStarted = Date()
        board = LoadingBoard(models: bundle?.uncompiled ?? [])
        status = "starting…"
        cancelFlag = CancelFlag()
        let flag = cancelFlag
        let catalog = self.catalog
        lifecycle.runStarted()
        let progress: @Sendable (GenerationWorker.Progress) -> Void = { [weak self] event in
            Task { @MainActor in self?.apply(event) }
        }
        runTask = Task {
            do {
                if let facts = bundle, facts.pendingDownloads > 0 || !facts.uncompiled.isEmpty {
                    bundle = try await worker.deliver(onProgress: progress)
                }
                try Task.checkCancellation()
                let result = try await worker.generate(request, catalog: catalog, photo: photo, sketch: sketch, mask: mask,
                                                       cancel: flag, onProgress: progress)
                image = try? ImageFiles.cgImage(result.pixels)
                report = result.report
                files = result.files
                status = "saved \(result.files.png.lastPathComponent) and its report in Documents"
            } catch is CancellationError {
                status = "stopped"
            } catch {
                errorMessage = ReadableError.sentence(error)
                status = ""
            }
            isRunning = false
            runStarted = nil
            lifecycle.runEnded()
        }
    }

    private func apply(_ event: GenerationWorker.Progress) {
        let now = RunTimer.monotonicSeconds()
        switch event {
        case .status(let line):
            status = line
        case .model(let event):
            board.apply(event, at: now)
        case .compile(let event):
            switch event {
            case .started(let name): board.set(name, .compiling(since: now))
            case .finished(let name, let seconds): board.set(name, .compiled(seconds: seconds))
            case .cached(let name): board.set(name, .compiled(seconds: 0))
            }
        case .step(let progress):
            step = progress.step
            stepCount = progress.stepCount
            status = "step \(progress.step)/\(progress.stepCount), \(TextSummaries.seconds(progress.seconds)) a step"
        }
    }

    /// Stops the run at the next step, or after the model being loaded (a single load cannot be interrupted).
    func cancel() {
        cancelFlag.cancel()
        runTask?.cancel()
        status = board.isBusy ? "stopping after the model being loaded…" : "stopping…"
    }

    // MARK: the system

    /// The app goes to the background: a run is stopped cleanly (with a little background time to do so), and the
    /// models are dropped, since iOS ends background apps that hold gigabytes first.
    func didEnterBackground() {
        if isRunning {
            lifecycle.requestBackgroundTime { [weak self] in self?.cancelFlag.cancel() }
            cancel()
        } else {
            Task { await worker.unload() }
        }
    }

    func didReceiveMemoryWarning() {
        guard !isRunning else { return }
        Task { await worker.unload() }
    }
}
