import Foundation

/// One package of a bundle that can be loaded into memory and dropped again.
///
/// The engine implements these over Core ML (Engine/CoreMLModels.swift); the tests implement them with fakes that
/// record every call, which is how the loop's memory schedule is checked on Linux.
public protocol LoadableModel: AnyObject {
    /// The component's name in the bundle: "TextEncoder", "UnetChunk1", "controlnet/Edges", …
    var name: String { get }
    func load() throws
    func unload()
}

/// What a text encoder gives for one text.
public struct TextEncoding: Sendable {
    /// (1, 77, D): SDXL's penultimate hidden layer, SD's last hidden state.
    public var hidden: Tensor
    /// (1, P): the pooled, projected embedding (SDXL's second encoder), nil for the others.
    public var pooled: Tensor?
    /// The words the 77-token window dropped, if any (the Python side warns the same way).
    public var droppedWords: String?

    public init(hidden: Tensor, pooled: Tensor?, droppedWords: String? = nil) {
        self.hidden = hidden
        self.pooled = pooled
        self.droppedWords = droppedWords
    }
}

/// A text encoder with its tokenizer.
public protocol TextEncoderModel: LoadableModel {
    func encode(_ text: String) throws -> TextEncoding
}

/// A network that maps named tensors to named tensors (UNet chunk, VAE half, ControlNet).
public protocol TensorModel: LoadableModel {
    /// The inputs the model declares (from the manifest), empty when unknown: the batch and shapes to feed.
    var inputSpecs: [TensorSpec] { get }
    func predict(_ inputs: [String: Tensor]) throws -> [String: Tensor]
}

/// What is loaded right now, how long each load took, and the most weight bytes ever resident at once.
///
/// Every load and unload of the loop goes through here, so the schedule is observable (the app's loading list, the
/// tests' residency checks) and the first load of each model — the one that compiles it for the device — is timed.
public final class ModelResidency: @unchecked Sendable {
    public enum Event: Equatable, Sendable {
        case loadStarted(String)
        /// `first`: the first load of this model in this process (includes the on-device compile).
        case loaded(String, seconds: Double, first: Bool)
        case unloaded(String)
    }

    private let lock = NSLock()
    private let now: () -> Double
    private var residentNames: [String] = []
    private var firstLoads: [String: Double] = [:]
    private var peakBytes = 0
    private var peakSet: [String] = []
    /// Weight bytes per package (the memory plan's), to follow the resident total.
    public var weightBytes: [String: Int]
    /// Called on every event, on the thread that loads.
    public var observer: ((Event) -> Void)?

    public init(weightBytes: [String: Int] = [:], now: @escaping () -> Double = RunTimer.monotonicSeconds) {
        self.weightBytes = weightBytes
        self.now = now
    }

    public var resident: [String] { lock.lock(); defer { lock.unlock() }; return residentNames }
    public var firstLoadSeconds: [String: Double] { lock.lock(); defer { lock.unlock() }; return firstLoads }
    public var peakResidentBytes: Int { lock.lock(); defer { lock.unlock() }; return peakBytes }
    public var peakResidentPackages: [String] { lock.lock(); defer { lock.unlock() }; return peakSet }
    public var residentBytes: Int { lock.lock(); defer { lock.unlock() }; return total(residentNames) }

    public func isResident(_ name: String) -> Bool { resident.contains(name) }

    /// Loads `model` unless it is loaded; returns the seconds spent (0 when it was).
    @discardableResult
    public func load(_ model: LoadableModel) throws -> Double {
        if isResident(model.name) { return 0 }
        observer?(.loadStarted(model.name))
        let start = now()
        try model.load()
        let seconds = now() - start
        lock.lock()
        residentNames.append(model.name)
        let first = firstLoads[model.name] == nil
        if first { firstLoads[model.name] = seconds }
        let bytes = total(residentNames)
        if bytes > peakBytes || peakSet.isEmpty {
            peakBytes = max(peakBytes, bytes)
            peakSet = residentNames
        }
        lock.unlock()
        observer?(.loaded(model.name, seconds: seconds, first: first))
        return seconds
    }

    public func unload(_ model: LoadableModel) {
        guard isResident(model.name) else { return }
        model.unload()
        lock.lock()
        residentNames.removeAll { $0 == model.name }
        lock.unlock()
        observer?(.unloaded(model.name))
    }

    /// Forgets the peak (call at the start of a run to get that run's peak).
    public func resetPeak() {
        lock.lock()
        peakBytes = total(residentNames)
        peakSet = residentNames
        lock.unlock()
    }

    /// Forgets that `name` was ever loaded (its files changed: the next load compiles again).
    public func forgetFirstLoad(_ name: String) {
        lock.lock()
        firstLoads[name] = nil
        lock.unlock()
    }

    private func total(_ names: [String]) -> Int { names.compactMap { weightBytes[$0] }.reduce(0, +) }
}

/// Runs a (possibly chunked) model on feeds whose axis 0 is the batch, whatever batch the model was converted for.
///
/// Core ML models have fixed shapes. The batch is cut into slices of the model's batch (the last slice padded by
/// repeating its last row, and the padding dropped again); each feed is reshaped to the declared shape when the
/// model wants another layout of the same values (Apple's flat (12,) `time_ids`). Chunk k+1 gets the original feeds
/// plus every output of chunk k, as Apple's pipeline chains `UnetChunk1` → `UnetChunk2`. The Python Core ML backend
/// does the same (`run_batched`).
public enum BatchedPrediction {
    public static func run(_ chunks: [TensorModel], feeds: [String: Tensor], batchInput: String = "sample") throws -> [String: Tensor] {
        guard let first = chunks.first, let total = (feeds[batchInput] ?? feeds.values.first)?.batch else { return [:] }
        let declared = first.inputSpecs.first { $0.name == batchInput } ?? first.inputSpecs.first { feeds[$0.name] != nil }
        let modelBatch = max(1, declared?.shape.first ?? total)
        var collected: [String: [Tensor]] = [:]
        var start = 0
        while start < total {
            let rows = min(modelBatch, total - start)
            var merged: [String: Tensor] = [:]
            for (name, value) in feeds {
                merged[name] = value.batch == total ? value.rows(start..<(start + rows)).repeatingRows(to: modelBatch) : value
            }
            var out: [String: Tensor] = [:]
            for chunk in chunks {
                let specs = chunk.inputSpecs
                var inputs: [String: Tensor] = [:]
                if specs.isEmpty {
                    inputs = merged
                } else {
                    let missing = specs.map(\.name).filter { merged[$0] == nil }
                    if !missing.isEmpty {
                        throw PocketSDError.badInput(
                            "the Core ML model \(chunk.name) needs inputs \(missing.joined(separator: ", ")) the app does not provide; re-convert the bundle")
                    }
                    for spec in specs {
                        var value = merged[spec.name]!
                        if !spec.shape.isEmpty, spec.shape != value.shape {
                            guard spec.shape.reduce(1, *) == value.count else {
                                throw PocketSDError.badInput(
                                    "\(chunk.name) wants \(spec.name) shaped \(spec.shape), the app has \(value.shape); the bundle does not match its manifest, re-convert it")
                            }
                            value = value.reshaped(spec.shape)
                        }
                        inputs[spec.name] = value
                    }
                }
                out = try chunk.predict(inputs)
                merged.merge(out) { new, _ in new }
            }
            for (name, value) in out {
                collected[name, default: []].append(value.batch == modelBatch && rows < modelBatch ? value.rows(0..<rows) : value)
            }
            start += rows
        }
        return collected.mapValues { $0.count == 1 ? $0[0] : .concatenating($0) }
    }

    /// The output called one of `preferred`, else the only output of rank `rank`.
    public static func pick(_ outputs: [String: Tensor], _ preferred: [String], rank: Int, model: String) throws -> Tensor {
        for name in preferred { if let value = outputs[name] { return value } }
        let candidates = outputs.values.filter { $0.shape.count == rank }
        if candidates.count == 1 { return candidates[0] }
        throw PocketSDError.badInput("\(model) has no \(preferred[0]) output (it has \(outputs.keys.sorted().joined(separator: ", "))); re-convert the bundle")
    }
}
