#if canImport(CoreML) && canImport(StableDiffusion)
import CoreML
import StableDiffusion

/// A text encoder that reports how long each `encode` takes.
///
/// Apple's SDXL pipeline encodes the prompt inside `generateImages` with no timing hook, but it accepts any
/// `TextEncoderXLModel`; wrapping Apple's own `TextEncoderXL` is how the app learns the text-encode time.
/// Under `reduceMemory` the encoder is loaded lazily inside `encode`, so that load lands in text_encode too.
@available(iOS 17.0, macOS 14.0, *)
struct TimedTextEncoder: TextEncoderXLModel {
    let base: TextEncoderXL
    let clock: StageClock

    func loadResources() throws { try base.loadResources() }

    func unloadResources() { base.unloadResources() }

    func encode(_ text: String) throws -> (hiddenEmbeddings: MLShapedArray<Float32>, pooledOutputs: MLShapedArray<Float32>) {
        try clock.timeTextEncode { try base.encode(text) }
    }
}
#endif
