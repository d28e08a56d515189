// Stand-in for Apple's StableDiffusion, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
import CoreML
import CoreGraphics
import Foundation

public protocol ResourceManaging {
    func loadResources() throws
    func unloadResources()
}
public struct BPETokenizer {
    public init(mergesAt mergesURL: URL, vocabularyAt vocabularyURL: URL, padToken: String = "<|endoftext|>") throws {}
}
public protocol TextEncoderXLModel: ResourceManaging {
    typealias TextEncoderXLOutput = (hiddenEmbeddings: MLShapedArray<Float32>, pooledOutputs: MLShapedArray<Float32>)
    func encode(_ text: String) throws -> TextEncoderXLOutput
}
public struct TextEncoderXL: TextEncoderXLModel {
    public init(tokenizer: BPETokenizer, modelAt url: URL, configuration: MLModelConfiguration) {}
    public func loadResources() throws {}
    public func unloadResources() {}
    public func encode(_ text: String) throws -> TextEncoderXLOutput { fatalError() }
}
public struct Unet: ResourceManaging {
    public init(modelAt url: URL, configuration: MLModelConfiguration) {}
    public init(chunksAt urls: [URL], configuration: MLModelConfiguration) {}
    public func loadResources() throws {}
    public func unloadResources() {}
}
public struct Decoder: ResourceManaging {
    public init(modelAt url: URL, configuration: MLModelConfiguration) {}
    public func loadResources() throws {}
    public func unloadResources() {}
}
public struct Encoder: ResourceManaging {
    public init(modelAt url: URL, configuration: MLModelConfiguration) {}
    public func loadResources() throws {}
    public func unloadResources() {}
}
public enum StableDiffusionScheduler { case pndmScheduler, dpmSolverMultistepScheduler, discreteFlowScheduler }
public enum StableDiffusionRNG { case numpyRNG, torchRNG, nvidiaRNG }
public struct PipelineConfiguration {
    public var prompt: String
    public var negativePrompt: String = ""
    public var startingImage: CGImage? = nil
    public var strength: Float = 1.0
    public var stepCount: Int = 50
    public var seed: UInt32 = 0
    public var guidanceScale: Float = 7.5
    public var disableSafety: Bool = false
    public var schedulerType: StableDiffusionScheduler = .pndmScheduler
    public var rngType: StableDiffusionRNG = .numpyRNG
    public var encoderScaleFactor: Float32 = 0.18215
    public var decoderScaleFactor: Float32 = 0.18215
    public var originalSize: Float32 = 1024
    public var targetSize: Float32 = 1024
    public init(prompt: String) { self.prompt = prompt }
}
public struct PipelineProgress {
    public let step: Int
    public let stepCount: Int
}
@available(iOS 17.0, macOS 14.0, *)
public struct StableDiffusionXLPipeline: ResourceManaging {
    public typealias Configuration = PipelineConfiguration
    public typealias Progress = PipelineProgress
    public init(textEncoder: TextEncoderXLModel?, textEncoder2: TextEncoderXLModel, unet: Unet, unetRefiner: Unet?, decoder: Decoder, encoder: Encoder?, reduceMemory: Bool = false) {}
    public func loadResources() throws {}
    public func unloadResources() {}
    public func generateImages(configuration config: Configuration, progressHandler: (Progress) -> Bool = { _ in true }) throws -> [CGImage?] { [] }
}
