// Stand-in for Apple's StableDiffusion package (1.1.1), only for type-checking PocketSDKit's engine on Linux
// (scripts/typecheck-engine.sh): the two pieces PocketSD uses, with the public signatures of Apple's sources
// (pipeline/ManagedMLModel.swift, tokenizer/BPETokenizer.swift) and their @available (ResourceManaging has none);
// no behaviour.
import CoreML
import Foundation

public protocol ResourceManaging {
    func loadResources() throws
    func unloadResources()
}

@available(iOS 16.2, macOS 13.1, *)
public final class ManagedMLModel: ResourceManaging {
    public init(modelAt url: URL, configuration: MLModelConfiguration) {}
    public func loadResources() throws {}
    public func unloadResources() {}
    public func perform<R>(_ body: (MLModel) throws -> R) throws -> R { fatalError() }
}

@available(iOS 16.2, macOS 13.1, *)
public struct BPETokenizer {
    public init(mergesAt mergesURL: URL, vocabularyAt vocabularyURL: URL, padToken: String = "<|endoftext|>") throws {}
    public func tokenize(input: String, minCount: Int? = nil) -> (tokens: [String], tokenIDs: [Int]) { ([], []) }
    public func decode(tokens: [String]) -> String { "" }
}
