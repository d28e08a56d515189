import PhotosUI
import PocketSDKit
import SwiftUI
import UniformTypeIdentifiers

@MainActor
struct ContentView: View {
    @EnvironmentObject private var model: GeneratorModel
    @State private var photoItem: PhotosPickerItem?
    @State private var strokes: [[CGPoint]] = []
    @State private var choosingBundle = false

    var body: some View {
        NavigationStack {
            Form {
                if let notice = model.notice { noticeSection(notice) }
                bundleSection
                promptSection
                settingsSection
                inputSection
                runSection
                if let image = model.image { resultSection(image) }
                if let report = model.report { StatsPanel(report: report) }
            }
            // The sketch canvas sits inside the form: while a finger draws, the form must not scroll.
            .scrollDisabled(model.isDrawing)
            .navigationTitle("PocketSD")
            .fileImporter(isPresented: $choosingBundle, allowedContentTypes: [.folder]) { result in
                switch result {
                case .success(let url): Task { await model.chooseBundle(url) }
                case .failure(let error): model.errorMessage = ReadableError.sentence(error)
                }
            }
            .alert("PocketSD", isPresented: Binding(get: { model.errorMessage != nil },
                                                  set: { if !$0 { model.errorMessage = nil } })) {
                Button("OK", role: .cancel) {}
            } message: {
                Text(model.errorMessage ?? "")
            }
        }
    }

    private func noticeSection(_ notice: String) -> some View {
        Section {
            Label(notice, systemImage: "exclamationmark.triangle").font(.callout)
            Button("Dismiss") { model.notice = nil }
        }
    }

    private var bundleSection: some View {
        Section("Model") {
            LabeledContent("Bundle", value: model.bundleName)
            if let bundle = model.bundle {
                Text(bundle.summary).font(.caption).foregroundStyle(.secondary)
                DisclosureGroup("Memory plan") {
                    ForEach(bundle.memoryLines, id: \.self) { Text($0).font(.caption2.monospaced()) }
                }
            }
            Button("Choose bundle folder…") { choosingBundle = true }
            if model.bundle != nil {
                Button("Remove compiled models", role: .destructive) { model.removeCompiledModels() }
                    .font(.caption)
            }
        }
    }

    private var promptSection: some View {
        Section("Prompt") {
            TextField("What to draw", text: $model.prompt, axis: .vertical)
                .lineLimit(1...4)
            TextField("Negative prompt (optional)", text: $model.negativePrompt, axis: .vertical)
                .lineLimit(1...3)
            Picker("Domain", selection: $model.domainName) {
                Text("None").tag("")
                ForEach(model.presets) { preset in
                    Text(preset.displayName).tag(preset.name)
                }
            }
            if let preset = model.presets.first(where: { $0.name == model.domainName }) {
                Text(preset.expand(model.prompt)).font(.caption).foregroundStyle(.secondary)
            }
            if let styles = model.bundle?.styles, !styles.isEmpty {
                Picker("LoRA style", selection: $model.style) {
                    Text("Preset's / default").tag("")
                    ForEach(styles, id: \.self) { Text($0).tag($0) }
                }
                Text("Styles are functions of the bundle's UNet and need iOS 18.").font(.caption2).foregroundStyle(.secondary)
            }
        }
    }

    private var settingsSection: some View {
        Section("Settings") {
            Stepper("Steps: \(model.steps)", value: $model.steps, in: 1...100)
            VStack(alignment: .leading) {
                Text(String(format: "Guidance %.1f", model.guidance)).font(.caption)
                Slider(value: $model.guidance, in: 0...15, step: 0.5)
            }
            Picker("Scheduler", selection: $model.scheduler) {
                ForEach(SchedulerKind.allCases, id: \.self) { Text($0.rawValue).tag($0) }
            }
            HStack {
                Toggle("Random seed", isOn: $model.randomSeed)
                if !model.randomSeed {
                    TextField("Seed", value: $model.seed, format: .number)
                        .multilineTextAlignment(.trailing)
                        .frame(maxWidth: 120)
                }
            }
            Picker("Compute units", selection: $model.computeUnits) {
                ForEach(ComputeUnitsChoice.allCases, id: \.self) { Text($0.rawValue).tag($0) }
            }
            Toggle("Low memory (one model at a time)", isOn: $model.lowMemory)
        }
    }

    private var inputSection: some View {
        Section("Start from") {
            Picker("Input", selection: $model.inputMode) {
                ForEach(GeneratorModel.InputMode.allCases) { Text($0.rawValue).tag($0) }
            }
            .pickerStyle(.segmented)
            switch model.inputMode {
            case .text:
                EmptyView()
            case .photo, .repaint:
                PhotosPicker(selection: $photoItem, matching: .images) {
                    Label(model.photo == nil ? "Pick a photo" : "Pick another photo", systemImage: "photo")
                }
                .onChange(of: photoItem) { _, item in loadPhoto(item) }
                if model.inputMode == .repaint, let photo = model.photo {
                    Text("Paint over what to repaint.").font(.caption)
                    SketchCanvas(strokes: $strokes, isDrawing: $model.isDrawing, size: canvasSize, background: photo, lineWidth: 24)
                    Button("Clear mask", role: .destructive) { strokes = [] }
                } else if let photo = model.photo {
                    Image(decorative: photo, scale: 1).resizable().scaledToFit().frame(maxHeight: 160)
                }
                controlNetPicker
                strengthSlider
            case .sketch:
                SketchCanvas(strokes: $strokes, isDrawing: $model.isDrawing, size: canvasSize)
                Button("Clear sketch", role: .destructive) { strokes = [] }
                controlNetPicker
                strengthSlider
            }
        }
    }

    private var canvasSize: CGSize {
        SketchCanvas.size(imageWidth: model.bundle?.imageSize.width ?? 1, imageHeight: model.bundle?.imageSize.height ?? 1)
    }

    @ViewBuilder private var controlNetPicker: some View {
        if let nets = model.bundle?.controlNets, !nets.isEmpty, model.inputMode != .repaint {
            Picker("ControlNet", selection: $model.controlNet) {
                Text("None (image → image)").tag("")
                ForEach(nets, id: \.self) { Text($0).tag($0) }
            }
        }
    }

    @ViewBuilder private var strengthSlider: some View {
        if model.controlNet.isEmpty || model.inputMode == .repaint {
            VStack(alignment: .leading) {
                Text(String(format: "Strength %.2f (lower keeps more of the start)", model.strength)).font(.caption)
                Slider(value: $model.strength, in: 0.1...1.0)
            }
        }
    }

    private var runSection: some View {
        Section {
            if model.isRunning {
                if !model.board.rows.isEmpty {
                    LoadingList(board: model.board)
                }
                if model.stepCount > 0 {
                    ProgressView(value: Double(model.step), total: Double(max(model.stepCount, 1)))
                }
                if let started = model.runStarted {
                    TimelineView(.periodic(from: started, by: 1)) { context in
                        Text("\(model.status) (\(Int(context.date.timeIntervalSince(started))) s)").font(.caption)
                    }
                } else {
                    Text(model.status).font(.caption)
                }
                Button("Cancel", role: .cancel) { model.cancel() }
            } else {
                Button("Generate") { model.generate(canvas: renderCanvas()) }
                    .disabled(model.prompt.trimmingCharacters(in: .whitespaces).isEmpty)
                if !model.status.isEmpty { Text(model.status).font(.caption).foregroundStyle(.secondary) }
            }
        }
    }

    private func resultSection(_ image: CGImage) -> some View {
        Section("Image") {
            Image(decorative: image, scale: 1)
                .resizable()
                .interpolation(image.width < 512 ? .none : .high)  // small model outputs stay crisp when enlarged
                .scaledToFit()
            if let files = model.files {
                // The files themselves: the PNG keeps its text metadata, the JSON is the run's report.
                ShareLink(items: [files.png, files.json]) {
                    Label("Share PNG and report", systemImage: "square.and.arrow.up")
                }
            }
        }
    }

    private func loadPhoto(_ item: PhotosPickerItem?) {
        guard let item else { return }
        Task {
            do {
                guard let data = try await item.loadTransferable(type: Data.self) else { return }
                model.loadPhoto(data)
            } catch {
                model.errorMessage = ReadableError.sentence(error)
            }
        }
    }

    /// The canvas as a CGImage (dark strokes on white for a sketch, white strokes on black for a mask), or nil
    /// when nothing is drawn.
    @MainActor
    private func renderCanvas() -> CGImage? {
        guard model.inputMode == .sketch || model.inputMode == .repaint, !strokes.isEmpty else { return nil }
        let asMask = model.inputMode == .repaint
        let renderer = ImageRenderer(content: SketchDrawing(strokes: strokes, lineWidth: asMask ? 24 : 5, asMask: asMask)
            .frame(width: canvasSize.width, height: canvasSize.height))
        renderer.scale = 2
        return renderer.cgImage
    }
}

/// One line per model while models compile and load: what is happening and for how long.
struct LoadingList: View {
    let board: LoadingBoard

    var body: some View {
        TimelineView(.periodic(from: .now, by: 1)) { _ in
            let now = RunTimer.monotonicSeconds()
            VStack(alignment: .leading, spacing: 2) {
                ForEach(board.rows) { row in
                    Text(row.text(now: now)).font(.caption.monospacedDigit())
                }
            }
        }
    }
}
