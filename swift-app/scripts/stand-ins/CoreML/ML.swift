// Stand-in for Apple's CoreML, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
import Foundation
public enum MLComputeUnits: Int { case cpuOnly, cpuAndGPU, all, cpuAndNeuralEngine }
open class MLModelConfiguration: NSObject, NSCopying {
    public var computeUnits: MLComputeUnits = .all
    public var functionName: String?
    public override init() {}
    public func copy(with zone: NSZone? = nil) -> Any { MLModelConfiguration() }
}
public struct MLShapedArray<Scalar> { public init() {} }
