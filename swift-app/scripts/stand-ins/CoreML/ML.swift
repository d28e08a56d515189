// Stand-in for Apple's CoreML, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the iOS 18 / macOS 15 SDK; no behaviour.
// Each declaration carries Apple's @available (scripts/availability.tsv). Swift on Linux ignores it, so
// scripts/check_availability.py checks our code's uses against that table instead.
import Foundation

@available(iOS 12.0, macOS 10.14, *)
public enum MLComputeUnits: Int {
    case cpuOnly, cpuAndGPU, all
    @available(iOS 16.0, macOS 13.0, *)
    case cpuAndNeuralEngine
}

@available(iOS 12.0, macOS 10.14, *)
open class MLModelConfiguration: NSObject, NSCopying {
    public var computeUnits: MLComputeUnits = .all
    // Multifunction models (iOS 18): a computed property here because a stored one cannot carry a newer availability.
    @available(iOS 18.0, macOS 15.0, *)
    public var functionName: String? { get { nil } set {} }
    public override init() {}
    public func copy(with zone: NSZone? = nil) -> Any { MLModelConfiguration() }
}

@available(iOS 11.0, macOS 10.13, *)
public enum MLMultiArrayDataType: Int {
    case double, float64, float32, float, int32
    @available(iOS 16.0, macOS 12.0, *)
    case float16
}

@available(iOS 11.0, macOS 10.13, *)
open class MLMultiArray: NSObject {
    @available(iOS 15.0, macOS 12.0, *)
    public init<Scalar>(_ shapedArray: MLShapedArray<Scalar>) {}
    @available(iOS 14.0, macOS 11.0, *)
    public init(concatenating arrays: [MLMultiArray], axis: Int, dataType: MLMultiArrayDataType) {}
    public var shape: [NSNumber] { [] }
    public var dataType: MLMultiArrayDataType { .float32 }
}

@available(iOS 15.0, macOS 12.0, *)
public struct MLShapedArray<Scalar> {
    public init() {}
    public init(scalars: [Scalar], shape: [Int]) {}
    public init(converting multiArray: MLMultiArray) {}
    public var scalars: [Scalar] { [] }
    public var shape: [Int] { [] }
}

@available(iOS 11.0, macOS 10.13, *)
open class MLFeatureValue: NSObject {
    public init(multiArray: MLMultiArray) {}
    public var multiArrayValue: MLMultiArray? { nil }
}

@available(iOS 11.0, macOS 10.13, *)
public protocol MLFeatureProvider {
    var featureNames: Set<String> { get }
    func featureValue(for featureName: String) -> MLFeatureValue?
}

@available(iOS 11.0, macOS 10.13, *)
open class MLDictionaryFeatureProvider: NSObject, MLFeatureProvider {
    public init(dictionary: [String: Any]) throws {}
    public var featureNames: Set<String> { [] }
    public func featureValue(for featureName: String) -> MLFeatureValue? { nil }
}

@available(iOS 11.0, macOS 10.13, *)
open class MLModel: NSObject {
    public func prediction(from input: MLFeatureProvider) throws -> MLFeatureProvider { fatalError() }
    // the async form; the synchronous compileModel(at:) is iOS 11 / macOS 10.13 and deprecated
    @available(iOS 16.0, macOS 13.0, *)
    public class func compileModel(at modelURL: URL) async throws -> URL { modelURL }
}

@available(iOS 17.0, macOS 14.0, *)
public final class MLCPUComputeDevice {}
@available(iOS 17.0, macOS 14.0, *)
public final class MLGPUComputeDevice {}
@available(iOS 17.0, macOS 14.0, *)
public final class MLNeuralEngineComputeDevice {}

@available(iOS 17.0, macOS 14.0, *)
public enum MLComputeDevice {
    case cpu(MLCPUComputeDevice)
    case gpu(MLGPUComputeDevice)
    case neuralEngine(MLNeuralEngineComputeDevice)
}

@available(iOS 17.4, macOS 14.4, *)
public enum MLModelStructure {
    public struct Program {
        public struct Operation {
            public var blocks: [Block] { [] }
        }
        public struct Block {
            public var operations: [Operation] { [] }
        }
        public struct Function {
            public var block: Block { Block() }
        }
        public var functions: [String: Function] { [:] }
    }
    case program(Program)
    case unsupported
}

@available(iOS 17.4, macOS 14.4, *)
public final class MLComputePlan {
    public struct DeviceUsage {
        public let preferred: MLComputeDevice
        public let supported: [MLComputeDevice]
    }
    public struct Cost {
        public let weight: Double
    }
    public static func load(contentsOf url: URL, configuration: MLModelConfiguration) async throws -> MLComputePlan { fatalError() }
    public var modelStructure: MLModelStructure { .unsupported }
    public func deviceUsage(for operation: MLModelStructure.Program.Operation) -> DeviceUsage? { nil }
    public func estimatedCost(of operation: MLModelStructure.Program.Operation) -> Cost? { nil }
}
