import Foundation

/// Where one model's operations run, as Core ML plans them (`MLComputePlan`, iOS 17.4 / macOS 14.4): how many of
/// its operations prefer the Neural Engine, the GPU or the CPU, and the same weighted by Core ML's estimated cost
/// of each operation. Filled by the engine; kept here so the report and its tests do not need Core ML.
public struct ComputePlanSummary: Equatable, Sendable {
    public static let devices = ["neural_engine", "gpu", "cpu"]

    /// Operations with a device assignment (constants and other free operations have none and are not counted).
    public private(set) var operations = 0
    public private(set) var operationsByDevice: [String: Int] = [:]
    /// Sum of Core ML's estimated relative cost per device (nil costs count as zero).
    public private(set) var costByDevice: [String: Double] = [:]

    public init() {}

    public mutating func add(device: String, cost: Double?) {
        operations += 1
        operationsByDevice[device, default: 0] += 1
        costByDevice[device, default: 0] += cost ?? 0
    }

    /// Fraction of operations on `device` (0 when there are none).
    public func operationShare(_ device: String) -> Double {
        operations == 0 ? 0 : Double(operationsByDevice[device] ?? 0) / Double(operations)
    }

    /// Fraction of the estimated cost on `device` (nil when Core ML gave no costs).
    public func costShare(_ device: String) -> Double? {
        let total = costByDevice.values.reduce(0, +)
        return total > 0 ? (costByDevice[device] ?? 0) / total : nil
    }

    public var json: JSONValue {
        func rounded(_ x: Double) -> JSONValue { .number((x * 1000).rounded() / 1000) }
        var object: [String: JSONValue] = ["operations": .integer(operations)]
        var opShares: [String: JSONValue] = [:]
        var costShares: [String: JSONValue] = [:]
        for device in Self.devices {
            opShares[device] = rounded(operationShare(device))
            costShares[device] = costShare(device).map(rounded) ?? .null
        }
        object["operation_share"] = .object(opShares)
        object["cost_share"] = .object(costShares)
        return .object(object)
    }

    /// "NE 93% · GPU 0% · CPU 7% of 812 ops".
    public var line: String {
        let parts = [("NE", "neural_engine"), ("GPU", "gpu"), ("CPU", "cpu")].map { label, key in
            "\(label) \(Int((operationShare(key) * 100).rounded()))%"
        }
        return parts.joined(separator: " · ") + " of \(operations) ops"
    }
}
