import PocketSDKit
import SwiftUI

/// The numbers of the last run: the same ones as its JSON report and `pocketsd generate`'s table.
struct StatsPanel: View {
    let report: GenerationReport

    var body: some View {
        let t = report.timings
        let steps = t.stepStats
        let memory = report.memory
        let details = report.backendDetails
        Section("Stats") {
            row("Load", TextSummaries.seconds(t.load) + (t.load == 0 ? " (models were loaded)" : ""))
            ForEach(details.compileSeconds.sorted(by: { $0.key < $1.key }), id: \.key) { entry in
                row("  compiled \(entry.key)", TextSummaries.seconds(entry.value))
            }
            ForEach(details.firstLoadSeconds.sorted(by: { $0.key < $1.key }), id: \.key) { entry in
                row("  first load \(entry.key)", TextSummaries.seconds(entry.value))
            }
            row("Text encode", TextSummaries.seconds(t.textEncode))
            if let encode = t.vaeEncode { row("VAE encode", TextSummaries.seconds(encode)) }
            row("UNet step (mean of \(steps.count))", TextSummaries.seconds(steps.mean))
            row("UNet step min / max", "\(TextSummaries.seconds(steps.min)) / \(TextSummaries.seconds(steps.max))")
            row("VAE decode", TextSummaries.seconds(t.vaeDecode))
            row("Total", TextSummaries.seconds(t.total))
            if let footprint = memory.peakFootprintMB { row("Peak footprint (this run)", String(format: "%.0f MB", footprint)) }
            if let lifetime = memory.lifetimePeakFootprintMB { row("Peak footprint (since launch)", String(format: "%.0f MB", lifetime)) }
            row("Peak resident (this run)", String(format: "%.0f MB", memory.peakRSSMB))
            if let available = memory.availableBeforeMB { row("Available before the run", String(format: "%.0f MB", available)) }
            if let weights = memory.modelWeightsPeakMB {
                row("Model weights resident at most", String(format: "%.0f MB", weights) + " (\(memory.modelWeightsPeakPackages.joined(separator: "+")))")
            }
            if let planned = details.plannedPeakMB, let stage = details.plannedPeakStage {
                row("Memory plan's largest stage", String(format: "%.0f MB", planned) + " (\(stage))")
            }
            ForEach((details.computePlan ?? [:]).sorted(by: { $0.key < $1.key }), id: \.key) { entry in
                row("Runs on: \(entry.key)", entry.value.line)
            }
            if let note = details.computePlanNote { Text(note).font(.caption2).foregroundStyle(.secondary) }
            if let bytes = report.model.unetBytes { row("UNet size", String(format: "%.1f MB", Double(bytes) / 1_048_576)) }
            if let bits = report.model.bitsPerWeight { row("Bits per weight", String(format: "%.2f", bits)) }
            row("Scheduler", report.scheduler)
            if let function = report.unetFunction { row("LoRA style (UNet function)", function) }
            row("Seed", String(report.seed))
            ForEach(report.warnings, id: \.self) { Text($0).font(.caption2).foregroundStyle(.orange) }
        }
    }

    private func row(_ label: String, _ value: String) -> some View {
        LabeledContent(label, value: value).font(.callout.monospacedDigit())
    }
}
