// Stand-in for Apple's CoreML, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the iOS 18 / macOS 15 SDK; no behaviour.
// Availability (iOS 17.4 for MLComputePlan, 18 for functionName) is not enforced on Linux: Xcode checks that.
import Foundation

public enum MLComputeUnits: Int { case cpuOnly, cpuAndGPU, all, cpuAndNeuralEngine }

open class MLModelConfiguration: NSObject, NSCopying {
    public var computeUnits: MLComputeUnits = .all
    public var functionName: String?
    public override init() {}
    public func copy(with zone: NSZone? = nil) -> Any { MLModelConfiguration() }
}

public enum MLMultiArrayDataType: Int { case double, float64, float32, float16, float, int32 }

open class MLMultiArray: NSObject {
    public init<Scalar>(_ shapedArray: MLShapedArray<Scalar>) {}
    public init(concatenating arrays: [MLMultiArray], axis: Int, dataType: MLMultiArrayDataType) {}
    public var shape: [NSNumber] { [] }
    public var dataType: MLMultiArrayDataType { .float32 }
}

public struct MLShapedArray<Scalar> {
    public init() {}
    public init(scalars: [Scalar], shape: [Int]) {}
    public init(converting multiArray: MLMultiArray) {}
    public var scalars: [Scalar] { [] }
    public var shape: [Int] { [] }
}

open class MLFeatureValue: NSObject {
    public init(multiArray: MLMultiArray) {}
    public var multiArrayValue: MLMultiArray? { nil }
}

public protocol MLFeatureProvider {
    var featureNames: Set<String> { get }
    func featureValue(for featureName: String) -> MLFeatureValue?
}

open class MLDictionaryFeatureProvider: NSObject, MLFeatureProvider {
    public init(dictionary: [String: Any]) throws {}
    public var featureNames: Set<String> { [] }
    public func featureValue(for featureName: String) -> MLFeatureValue? { nil }
}

open class MLModel: NSObject {
    public func prediction(from input: MLFeatureProvider) throws -> MLFeatureProvider { fatalError() }
    public class func compileModel(at modelURL: URL) async throws -> URL { modelURL }
}

public final class MLCPUComputeDevice {}
public final class MLGPUComputeDevice {}
public final class MLNeuralEngineComputeDevice {}

public enum MLComputeDevice {
    case cpu(MLCPUComputeDevice)
    case gpu(MLGPUComputeDevice)
    case neuralEngine(MLNeuralEngineComputeDevice)
}

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

@available(macOS 14.4, iOS 17.4, *)
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
