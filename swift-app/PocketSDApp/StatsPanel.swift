import PocketSDKit
import SwiftUI

/// The numbers of the last run: the same ones as the JSON report and `pocketsd generate`'s table.
struct StatsPanel: View {
    let report: GenerationReport

    var body: some View {
        let t = report.timings
        let steps = t.stepStats
        Section("Stats") {
            row("Load", TextSummaries.seconds(t.load) + (t.load == 0 ? " (models were loaded)" : ""))
            ForEach(report.firstLoadSeconds.sorted(by: { $0.key < $1.key }), id: \.key) { entry in
                row("  first load \(entry.key)", TextSummaries.seconds(entry.value))
            }
            row("Text encode", TextSummaries.seconds(t.textEncode))
            row("UNet step (mean of \(steps.count))", TextSummaries.seconds(steps.mean))
            row("UNet step min / max", "\(TextSummaries.seconds(steps.min)) / \(TextSummaries.seconds(steps.max))")
            row("VAE decode", TextSummaries.seconds(t.vaeDecode))
            row("Total", TextSummaries.seconds(t.total))
            if let footprint = report.memory.peakFootprintMB {
                row("Peak footprint (since launch)", String(format: "%.0f MB", footprint))
            }
            row("Peak resident (since launch)", String(format: "%.0f MB", report.memory.peakRSSMB))
            if let bytes = report.model.unetBytes { row("UNet size", String(format: "%.1f MB", Double(bytes) / 1_048_576)) }
            if let bits = report.model.bitsPerWeight { row("Bits per weight", String(format: "%.2f", bits)) }
            row("Scheduler", report.scheduler + (report.scheduler == report.schedulerRequested ? "" : " (asked: \(report.schedulerRequested))"))
            if let function = report.unetFunction { row("UNet function", function) }
            row("Seed", String(report.seed))
        }
    }

    private func row(_ label: String, _ value: String) -> some View {
        LabeledContent(label, value: value).font(.callout.monospacedDigit())
    }
}
