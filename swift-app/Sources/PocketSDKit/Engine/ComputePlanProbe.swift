#if canImport(CoreML)
import CoreML
import Foundation

/// Where Core ML plans to run each model's operations (Neural Engine, GPU or CPU), from `MLComputePlan`.
///
/// The plan is what Core ML intends for this device and these compute units; it is read from the compiled model
/// without running it. An operation Core ML moves at run time (for example when the Neural Engine refuses a shape)
/// is not seen here: Xcode's Core ML performance report or Instruments show that.
public enum ComputePlanProbe {
    /// `function`: the multifunction UNet's function the configuration selects (nil: the model's default). It is
    /// passed in rather than read from `configuration.functionName`, which exists only from iOS 18 / macOS 15 while
    /// compute plans exist from 17.4 / 14.4.
    @available(iOS 17.4, macOS 14.4, *)
    public static func summarize(modelAt url: URL, configuration: MLModelConfiguration, function: String? = nil) async throws -> ComputePlanSummary? {
        let plan = try await MLComputePlan.load(contentsOf: url, configuration: configuration)
        guard case .program(let program) = plan.modelStructure else { return nil }
        guard let function = program.functions[function ?? "main"] ?? program.functions.values.first else { return nil }
        var summary = ComputePlanSummary()
        func walk(_ block: MLModelStructure.Program.Block) {
            for operation in block.operations {
                if let usage = plan.deviceUsage(for: operation) {
                    summary.add(device: deviceName(usage.preferred), cost: plan.estimatedCost(of: operation)?.weight)
                }
                for nested in operation.blocks { walk(nested) }
            }
        }
        walk(function.block)
        return summary
    }

    @available(iOS 17.4, macOS 14.4, *)
    static func deviceName(_ device: MLComputeDevice) -> String {
        switch device {
        case .neuralEngine: return "neural_engine"
        case .gpu: return "gpu"
        case .cpu: return "cpu"
        @unknown default: return "other"
        }
    }

    /// Why there is no plan on this OS (the report's `compute_plan_note`).
    public static var unavailableNote: String {
        "MLComputePlan needs iOS 17.4 / macOS 14.4; update the OS to see where each model runs"
    }
}
#endif
