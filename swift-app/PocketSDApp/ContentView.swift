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
                bundleSection
                requestSection
                inputSection
                runSection
                if let image = model.image { resultSection(image) }
                if let report = model.report { StatsPanel(report: report) }
            }
            .navigationTitle("PocketSD")
            .fileImporter(isPresented: $choosingBundle, allowedContentTypes: [.folder]) { result in
                if case .success(let url) = result { Task { await model.chooseBundle(url) } }
            }
            .alert("PocketSD", isPresented: Binding(get: { model.errorMessage != nil },
                                                  set: { if !$0 { model.errorMessage = nil } })) {
                Button("OK", role: .cancel) {}
            } message: {
                Text(model.errorMessage ?? "")
            }
        }
    }

    private var bundleSection: some View {
        Section("Model") {
            LabeledContent("Bundle", value: model.bundleURL?.lastPathComponent ?? "none")
            Text(model.bundleSummary).font(.caption).foregroundStyle(.secondary)
            Button("Choose bundle folder…") { choosingBundle = true }
        }
    }

    private var requestSection: some View {
        Section("Prompt") {
            TextField("What to draw", text: $model.prompt, axis: .vertical)
                .lineLimit(1...4)
            Picker("Domain", selection: $model.domainName) {
                Text("None").tag("")
                ForEach(model.presets) { preset in
                    Text(preset.displayName).tag(preset.name)
                }
            }
            if let preset = model.presets.first(where: { $0.name == model.domainName }) {
                Text(preset.expand(model.prompt)).font(.caption).foregroundStyle(.secondary)
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
            Toggle("Reduce memory (load models per stage)", isOn: $model.reduceMemory)
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
            case .photo:
                PhotosPicker(selection: $photoItem, matching: .images) {
                    Label(model.photo == nil ? "Pick a photo" : "Pick another photo", systemImage: "photo")
                }
                .onChange(of: photoItem) { _, item in loadPhoto(item) }
                if let photo = model.photo {
                    Image(decorative: photo, scale: 1).resizable().scaledToFit().frame(maxHeight: 160)
                }
                strengthSlider
            case .sketch:
                SketchCanvas(strokes: $strokes)
                    .frame(height: 260)
                Button("Clear sketch", role: .destructive) { strokes = [] }
                strengthSlider
            }
        }
    }

    private var strengthSlider: some View {
        VStack(alignment: .leading) {
            Text(String(format: "Strength %.2f (lower keeps more of the start)", model.strength)).font(.caption)
            Slider(value: $model.strength, in: 0.1...1.0)
        }
    }

    private var runSection: some View {
        Section {
            if model.isRunning {
                ProgressView(value: Double(model.step), total: Double(max(model.stepCount, 1))) {
                    Text(model.status).font(.caption)
                }
                Button("Cancel", role: .cancel) { model.cancel() }
            } else {
                Button("Generate") { model.generate(sketch: renderSketch()) }
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
            ShareLink(item: Image(decorative: image, scale: 1),
                      preview: SharePreview("PocketSD image", image: Image(decorative: image, scale: 1)))
        }
    }

    private func loadPhoto(_ item: PhotosPickerItem?) {
        guard let item else { return }
        Task {
            do {
                guard let data = try await item.loadTransferable(type: Data.self) else { return }
                model.photo = try ImageFiles.load(data: data)
            } catch {
                model.errorMessage = String(describing: error)
            }
        }
    }

    /// The canvas as a CGImage (dark strokes on white), or nil when nothing is drawn.
    @MainActor
    private func renderSketch() -> CGImage? {
        guard model.inputMode == .sketch, !strokes.isEmpty else { return nil }
        let renderer = ImageRenderer(content: SketchDrawing(strokes: strokes).frame(width: 260, height: 260))
        renderer.scale = 2
        return renderer.cgImage
    }
}
