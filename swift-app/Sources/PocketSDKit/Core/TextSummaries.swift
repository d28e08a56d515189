import Foundation

/// Plain-text summaries for the command line tool (the app shows the same numbers in its stats panel).
public enum TextSummaries {
    /// `pocketsd-swift info DIR`: what the bundle holds and what the app will do with it, loading nothing.
    /// Describes uncompiled bundles too, ending with what stands between them and a run.
    public static func describeBundle(at url: URL) throws -> String {
        let resources = BundleLayout.resourcesFolder(url)
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: resources.path) else {
            throw PocketSDError.badInput("no bundle folder at \(url.path); pass the folder written by `pocketsd convert`")
        }
        let manifest = try BundleManifest.load(resources: resources)
        var lines = ["Core ML bundle: \(resources.path)"]
        if let version = manifest.formatVersion { lines.append("  manifest format: \(version)") }
        let models = entries.filter { $0.hasSuffix(".mlmodelc") || $0.hasSuffix(".mlpackage") }.sorted()
        for model in models {
            let bytes = BundleLayout.folderBytes(resources.appendingPathComponent(model))
            lines.append("  \(model): \(String(format: "%.2f", Double(bytes) / 1_048_576)) MB")
        }
        lines.append("  model type: \(manifest.family)")
        if !manifest.unetFunctions.isEmpty {
            lines.append("  UNet functions: \(manifest.unetFunctions.joined(separator: ", ")) (default \(manifest.defaultUnetFunction ?? "?"); choosing another needs iOS 18 / macOS 15)")
        }
        if !manifest.controlNets.isEmpty { lines.append("  ControlNets: \(manifest.controlNets.joined(separator: ", "))") }
        lines.append("  image size: \(manifest.imageSize.width)x\(manifest.imageSize.height), latents \(manifest.latentSize.width)x\(manifest.latentSize.height)")
        lines.append("  VAE scaling factor: \(manifest.vaeScalingFactor)")
        lines.append("  VAE precision: \(manifest.vaeIsFloat32 ? "fp32 (runs on CPU+GPU; at 1024² that is slow and large on a phone — convert with an fp16-safe VAE)" : "fp16")")
        lines.append("  tokenizers pad with: \(manifest.padTokens.joined(separator: ", "))")
        lines.append("  scheduler: timestep spacing \(manifest.schedulerConfig.timestepSpacing), steps offset \(manifest.schedulerConfig.stepsOffset), final sigma \(manifest.schedulerConfig.finalSigmasType)")
        if let bytes = manifest.unetBytes { lines.append("  UNet bytes: \(bytes) (\(String(format: "%.1f", Double(bytes) / 1_048_576)) MB)") }
        if let bits = manifest.bitsPerWeight { lines.append("  bits per weight: \(String(format: "%.2f", bits))") }
        if let source = manifest.source { lines.append("  converted from: \(source)") }
        if let file = manifest.file {
            lines.append("  manifest: \(file.path)")
        } else {
            lines.append("  no pocketsd.json: SDXL defaults assumed")
        }
        for assumption in manifest.assumptions { lines.append("  assumed: \(assumption)") }
        lines += manifest.memoryPlan.describe().map { "  " + $0 }
        do {
            let nets = (try? FileManager.default.contentsOfDirectory(atPath: resources.appendingPathComponent(BundleLayout.controlNetFolder).path)) ?? []
            let layout = try BundleLayout(entries: entries, controlNetEntries: nets)
            try manifest.checkRunnable()
            var facts = [layout.unet == .chunked ? "chunked UNet" : "single UNet",
                         layout.hasEncoder ? "image → image" : "no VAEEncoder: text → image only"]
            if !layout.needsCompile.isEmpty { facts.append("compiles \(layout.needsCompile.joined(separator: ", ")) on first use") }
            if !layout.notDownloaded.isEmpty { facts.append("not downloaded from iCloud yet: \(layout.notDownloaded.joined(separator: ", "))") }
            lines.append("  ready to run: yes (\(facts.joined(separator: "; ")))")
        } catch {
            lines.append("  ready to run: no — \(error)")
        }
        return lines.joined(separator: "\n")
    }

    /// `pocketsd-swift domains`: one preset a line.
    public static func describeDomains(_ catalog: DomainCatalog) -> String {
        let width = catalog.names.map(\.count).max() ?? 0
        return catalog.domains.map { preset in
            let padded = preset.name.padding(toLength: width, withPad: " ", startingAt: 0)
            let lora = preset.lora.map { " [LoRA \($0.file) ×\($0.scale)]" } ?? ""
            return "\(padded)  \(preset.steps) steps, guidance \(preset.guidance), \(preset.scheduler)\(lora) — \(preset.description)"
        }.joined(separator: "\n")
    }

    /// The closing table of a run, as the Python CLI prints it.
    public static func describeRun(_ report: GenerationReport) -> String {
        let t = report.timings
        let stats = t.stepStats
        var rows: [(String, String)] = [("load", seconds(t.load))]
        for (name, value) in report.backendDetails.compileSeconds.sorted(by: { $0.key < $1.key }) {
            rows.append(("  compile \(name)", seconds(value)))
        }
        for (name, value) in report.firstLoadSeconds.sorted(by: { $0.key < $1.key }) {
            rows.append(("  first load \(name)", seconds(value)))
        }
        rows.append(("text encode", seconds(t.textEncode)))
        if stats.count > 0 {
            rows.append(("UNet step ×\(stats.count) (mean / min / max)",
                         "\(seconds(stats.mean)) / \(seconds(stats.min)) / \(seconds(stats.max))"))
        }
        rows.append(("VAE decode", seconds(t.vaeDecode)))
        rows.append(("total", seconds(t.total)))
        rows.append(("peak RSS (this run)", String(format: "%.0f MB", report.memory.peakRSSMB)))
        if let footprint = report.memory.peakFootprintMB {
            rows.append(("peak physical footprint (this run)", String(format: "%.0f MB", footprint)))
        }
        if let lifetime = report.memory.lifetimePeakFootprintMB {
            rows.append(("peak physical footprint (process)", String(format: "%.0f MB", lifetime)))
        }
        if let weights = report.memory.modelWeightsPeakMB {
            rows.append(("model weights resident at most", String(format: "%.0f MB", weights) + " (\(report.memory.modelWeightsPeakPackages.joined(separator: "+")))"))
        }
        if let bytes = report.model.unetBytes { rows.append(("UNet bytes", String(format: "%.2f MB", Double(bytes) / 1_048_576))) }
        if let bits = report.model.bitsPerWeight { rows.append(("bits per weight (UNet)", String(format: "%.2f", bits))) }
        for (name, plan) in (report.backendDetails.computePlan ?? [:]).sorted(by: { $0.key < $1.key }) {
            rows.append(("compute plan \(name)", plan.line))
        }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { "\($0.0.padding(toLength: width, withPad: " ", startingAt: 0))  \($0.1)" }.joined(separator: "\n")
    }

    public static func seconds(_ s: Double) -> String {
        s < 1 ? String(format: "%.0f ms", s * 1000) : String(format: "%.2f s", s)
    }
}
