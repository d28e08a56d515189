#if canImport(CoreML) && canImport(StableDiffusion)
import CoreML
import Foundation
import StableDiffusion

/// Tensor ↔ Core ML arrays, at the model boundary only.
@available(iOS 17.0, macOS 14.0, *)
enum TensorBridge {
    /// A Core ML input: float32, or float16 when the manifest says the model takes float16.
    static func multiArray(_ tensor: Tensor, dtype: String?) -> MLMultiArray {
        let array = MLMultiArray(MLShapedArray<Float32>(scalars: tensor.scalars, shape: tensor.shape))
        guard let dtype, dtype.lowercased().contains("16") else { return array }
        // MLMultiArray's concatenating initializer converts the element type (Apple's pipeline converts outputs the same way).
        return MLMultiArray(concatenating: [array], axis: 0, dataType: .float16)
    }

    /// A Core ML output of any element type and strides → a dense float32 tensor.
    static func tensor(_ array: MLMultiArray) -> Tensor {
        let shaped = MLShapedArray<Float32>(converting: array)
        return Tensor(shape: shaped.shape, scalars: shaped.scalars)
    }

    static func outputs(_ provider: MLFeatureProvider) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for name in provider.featureNames {
            if let array = provider.featureValue(for: name)?.multiArrayValue { out[name] = tensor(array) }
        }
        return out
    }
}

/// One package of the bundle (UNet chunk, VAE half, ControlNet) over Apple's `ManagedMLModel`, which loads the
/// compiled model on `load()` and drops it on `unload()`.
///
/// Apple's `Unet`, `Decoder` and `Encoder` wrap the same `ManagedMLModel` but do not fit the loop: `Unet`'s
/// prediction is internal to Apple's package, `Decoder` returns CGImages rounded its own way, and `Encoder` samples
/// the latent with its own random draws (so image → image would not match the Python side for a seed).
@available(iOS 17.0, macOS 14.0, *)
final class CoreMLTensorModel: TensorModel {
    let name: String
    let inputSpecs: [TensorSpec]
    private let managed: ManagedMLModel

    init(name: String, url: URL, configuration: MLModelConfiguration, inputs: [TensorSpec]) {
        self.name = name
        self.inputSpecs = inputs
        managed = ManagedMLModel(modelAt: url, configuration: configuration)
    }

    func load() throws { try managed.loadResources() }

    func unload() { managed.unloadResources() }

    func predict(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        var features: [String: MLFeatureValue] = [:]
        for (name, tensor) in inputs {
            let dtype = inputSpecs.first { $0.name == name }?.dtype
            features[name] = MLFeatureValue(multiArray: TensorBridge.multiArray(tensor, dtype: dtype))
        }
        let provider = try MLDictionaryFeatureProvider(dictionary: features)
        let result = try managed.perform { model in try model.prediction(from: provider) }
        return TensorBridge.outputs(result)
    }
}

/// A text encoder with Apple's `BPETokenizer`, over Apple's `ManagedMLModel`.
///
/// Not Apple's `TextEncoderXL`: it force-unwraps the SDXL output names (an SD bundle, or any other output name,
/// would crash the app instead of giving a sentence), and it prints a truncated prompt instead of returning it,
/// so the report could not carry the warning the Python side writes.
@available(iOS 17.0, macOS 14.0, *)
final class CoreMLTextEncoder: TextEncoderModel {
    let name: String
    private let tokenizer: BPETokenizer
    private let managed: ManagedMLModel
    private let input: TensorSpec
    private let keepsPooled: Bool

    init(name: String, tokenizer: BPETokenizer, url: URL, configuration: MLModelConfiguration, input: TensorSpec?, keepsPooled: Bool) {
        self.name = name
        self.tokenizer = tokenizer
        managed = ManagedMLModel(modelAt: url, configuration: configuration)
        self.input = input ?? TensorSpec(name: "input_ids", shape: [1, 77])
        self.keepsPooled = keepsPooled
    }

    func load() throws { try managed.loadResources() }

    func unload() { managed.unloadResources() }

    func encode(_ text: String) throws -> TextEncoding {
        let length = input.shape.last ?? 77
        var (tokens, ids) = tokenizer.tokenize(input: text, minCount: length)
        var dropped: String?
        if ids.count > length {
            // Keep the first length − 1 tokens and the end token, as CLIP's tokenizer truncates.
            let kept = Array(tokens.prefix(length - 1)) + [tokens.last!]
            dropped = tokenizer.decode(tokens: Array(tokens[(length - 1)..<(tokens.count - 1)]))
            tokens = kept
            ids = Array(ids.prefix(length - 1)) + [ids.last!]
        }
        let inputTensor = Tensor(shape: input.shape.isEmpty ? [1, length] : input.shape, scalars: ids.map(Float.init))
        let provider = try MLDictionaryFeatureProvider(dictionary: [
            input.name: MLFeatureValue(multiArray: TensorBridge.multiArray(inputTensor, dtype: input.dtype)),
        ])
        let result = try managed.perform { model in try model.prediction(from: provider) }
        let outputs = TensorBridge.outputs(result)
        let hidden = try BatchedPrediction.pick(outputs, ["hidden_embeds", "last_hidden_state", "hidden_states"], rank: 3, model: name)
        let pooled = keepsPooled ? try BatchedPrediction.pick(outputs, ["pooled_outputs", "text_embeds", "pooled_output"], rank: 2, model: name) : nil
        return TextEncoding(hidden: hidden, pooled: pooled, droppedWords: dropped)
    }
}
#endif
