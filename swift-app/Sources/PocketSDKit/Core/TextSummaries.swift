import Foundation

/// Plain-text summaries for the command line tool (the app shows the same numbers in its stats panel).
public enum TextSummaries {
    /// `pocketsd-swift info DIR`: what the bundle holds and what the app will do with it, loading nothing.
    public static func describeBundle(at url: URL) throws -> String {
        let (resources, layout) = try BundleLayout.inspect(url)
        let manifest = try BundleManifest.load(resources: resources)
        var lines = ["Core ML bundle: \(resources.path)"]
        lines.append("  UNet: \(layout.unet == .chunked ? "two chunks (UnetChunk1 + UnetChunk2)" : "single Unet")"
                     + (manifest.unetFunctions.isEmpty ? "" : ", functions: \(manifest.unetFunctions.joined(separator: ", "))"
                        + " (default \(manifest.defaultUnetFunction ?? "?"))"))
        lines.append("  image size: \(manifest.imageSize.width)x\(manifest.imageSize.height)")
        lines.append("  image → image: \(layout.hasEncoder ? "yes (VAEEncoder)" : "no (no VAEEncoder)")")
        lines.append("  VAE scaling factor: \(manifest.vaeScalingFactor)")
        lines.append("  VAE precision: \(manifest.vaeIsFloat32 ? "fp32 (runs on CPU+GPU)" : "fp16")")
        if let bytes = manifest.unetBytes { lines.append("  UNet bytes: \(bytes) (\(String(format: "%.1f", Double(bytes) / 1_048_576)) MB)") }
        if let bits = manifest.bitsPerWeight { lines.append("  bits per weight: \(String(format: "%.2f", bits))") }
        if let source = manifest.source { lines.append("  converted from: \(source)") }
        if let file = manifest.file {
            lines.append("  manifest: \(file.path)")
        } else {
            lines.append("  no pocketsd.json: SDXL defaults assumed")
        }
        do {
            try manifest.checkRunnable()
            lines.append("  runs with Apple's StableDiffusionXLPipeline: yes")
        } catch {
            lines.append("  runs with Apple's StableDiffusionXLPipeline: no — \(error)")
        }
        for assumption in manifest.assumptions { lines.append("  assumed: \(assumption)") }
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
        rows.append(("peak RSS", String(format: "%.0f MB", report.memory.peakRSSMB)))
        if let footprint = report.memory.peakFootprintMB {
            rows.append(("peak physical footprint", String(format: "%.0f MB", footprint)))
        }
        if let bytes = report.model.unetBytes { rows.append(("UNet bytes", String(format: "%.2f MB", Double(bytes) / 1_048_576))) }
        if let bits = report.model.bitsPerWeight { rows.append(("bits per weight (UNet)", String(format: "%.2f", bits))) }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { "\($0.0.padding(toLength: width, withPad: " ", startingAt: 0))  \($0.1)" }.joined(separator: "\n")
    }

    public static func seconds(_ s: Double) -> String {
        s < 1 ? String(format: "%.0f ms", s * 1000) : String(format: "%.2f s", s)
    }
}
