import Foundation

/// The model's scheduler settings: diffusers' `scheduler_config.json`, which the converter copies into the bundle
/// manifest (`scheduler_config`).
public struct SchedulerConfig: Equatable, Sendable {
    public var trainTimesteps = 1000
    public var betaStart = 0.00085
    public var betaEnd = 0.012
    public var betaSchedule = "scaled_linear"
    public var predictionType = "epsilon"
    public var timestepSpacing = "leading"
    public var stepsOffset = 1
    public var finalSigmasType = "zero"
    // DPM-Solver++ settings (diffusers' defaults when the model ships another scheduler's config)
    public var solverOrder = 2
    public var lowerOrderFinal = true
    public var eulerAtFinal = false
    // DDIM settings; pocketsd's loop (make_scheduler) defaults both to false for latent models
    public var clipSample = false
    public var setAlphaToOne = false

    /// The SD/SDXL training schedule, used when a bundle's manifest carries no scheduler config (the Python side's
    /// fallback too).
    public static let sdxlDefault = SchedulerConfig()

    public init() {}

    /// From the JSON object; options this implementation does not have are refused in one sentence rather than
    /// silently run differently from the Python side.
    public init(json: JSONValue) throws {
        func string(_ key: String) -> String? { json[key]?.string }
        func bool(_ key: String) -> Bool? { json[key]?.bool }
        if let v = json["num_train_timesteps"]?.int { trainTimesteps = v }
        if let v = json["beta_start"]?.double { betaStart = v }
        if let v = json["beta_end"]?.double { betaEnd = v }
        if let v = string("beta_schedule") { betaSchedule = v }
        if let v = string("prediction_type") { predictionType = v }
        if let v = string("timestep_spacing") { timestepSpacing = v }
        if let v = json["steps_offset"]?.int { stepsOffset = v }
        if let v = string("final_sigmas_type") { finalSigmasType = v }
        if let v = json["solver_order"]?.int { solverOrder = v }
        if let v = bool("lower_order_final") { lowerOrderFinal = v }
        if let v = bool("euler_at_final") { eulerAtFinal = v }
        if let v = bool("clip_sample") { clipSample = v }
        if let v = bool("set_alpha_to_one") { setAlphaToOne = v }

        func refuse(_ what: String) -> PocketSDError {
            .badInput("the bundle's scheduler config asks for \(what), which the app's schedulers do not implement; use the Python CLI for this model")
        }
        guard ["scaled_linear", "linear"].contains(betaSchedule) else { throw refuse("beta_schedule \(betaSchedule)") }
        guard json["trained_betas"]?.isNull ?? true else { throw refuse("trained_betas") }
        guard ["epsilon", "v_prediction"].contains(predictionType) else { throw refuse("prediction_type \(predictionType)") }
        guard ["leading", "linspace", "trailing"].contains(timestepSpacing) else { throw refuse("timestep_spacing \(timestepSpacing)") }
        guard ["zero", "sigma_min"].contains(finalSigmasType) else { throw refuse("final_sigmas_type \(finalSigmasType)") }
        for flag in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "rescale_betas_zero_snr",
                     "thresholding", "use_flow_sigmas"] where bool(flag) == true {
            throw refuse(flag)
        }
        if let type = string("interpolation_type"), type != "linear" { throw refuse("interpolation_type \(type)") }
        if let type = string("timestep_type"), type != "discrete" { throw refuse("timestep_type \(type)") }
        if let algorithm = string("algorithm_type"), algorithm != "dpmsolver++" { throw refuse("algorithm_type \(algorithm)") }
        if let solver = string("solver_type"), solver != "midpoint" { throw refuse("solver_type \(solver)") }
        guard (1...2).contains(solverOrder) else { throw refuse("solver_order \(solverOrder)") }
    }

    /// Cumulative products of (1 − β) over the training schedule, as diffusers computes them in float32: β from
    /// torch.linspace (which counts the second half of the range back from its end), products accumulated in
    /// double and stored as float (torch's CPU cumprod).
    public func alphasCumprod() -> [Float] {
        let n = trainTimesteps
        func linspace(_ start: Float, _ end: Float) -> [Float] {
            guard n > 1 else { return [start] }
            let step: Float = (end - start) / Float(n - 1)
            var values = [Float](repeating: 0, count: n)
            for i in 0..<n {
                let fromStart: Float = start + step * Float(i)
                let fromEnd: Float = end - step * Float(n - i - 1)
                values[i] = i < n / 2 ? fromStart : fromEnd
            }
            return values
        }
        let betas: [Float] = betaSchedule == "linear"
            ? linspace(Float(betaStart), Float(betaEnd))
            : linspace(Float(betaStart.squareRoot()), Float(betaEnd.squareRoot())).map { $0 * $0 }
        var product = 1.0
        return betas.map { beta in
            product *= Double(1 - beta)
            return Float(product)
        }
    }
}

/// A diffusers scheduler, driven by the index of the step in its full schedule (image → image starts past 0).
///
/// PocketSD writes its own three (`euler`, `dpmpp2m`, `ddim`, the contract's names) rather than using Apple's,
/// because Apple's package has no Euler or DDIM, and its DPM-Solver++ spaces "leading" timesteps by 999 ÷ (steps + 1)
/// where diffusers uses 1000 ÷ (steps + 1) (other timesteps whenever steps + 1 divides 1000, e.g. 9 or 19 steps) and
/// ends on σ(t=0) instead of 0.
/// Each is checked against diffusers itself on the same inputs (Tests/…/Fixtures/schedulers.json).
public protocol DiffusionScheduler: AnyObject {
    /// Every timestep of the schedule, first (noisiest) first.
    var timesteps: [Double] { get }
    /// The scale of the starting noise.
    var initNoiseSigma: Float { get }
    func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor
    /// The sample after step `stepIndex`, given the model's prediction at that step.
    func step(_ modelOutput: Tensor, stepIndex: Int, sample: Tensor) -> Tensor
    /// `original` noised to the level of step `stepIndex` (image → image start; inpainting's kept region).
    func addNoise(_ original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor
}

public enum SchedulerKind: String, CaseIterable, Sendable {
    case euler
    case dpmpp2m
    case ddim

    public func make(config: SchedulerConfig, steps: Int) -> DiffusionScheduler {
        switch self {
        case .euler: return EulerScheduler(config: config, steps: steps)
        case .dpmpp2m: return DPMSolverPlusPlus2MScheduler(config: config, steps: steps)
        case .ddim: return DDIMScheduler(config: config, steps: steps)
        }
    }
}

/// numpy's `round` (half to even), which the timestep formulas use.
@inline(__always) func roundHalfEven(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

/// np.interp(x, arange(n), values) for x inside [0, n − 1].
func interpolate(_ values: [Float], at x: Double) -> Double {
    let lower = max(0, min(values.count - 1, Int(x.rounded(.down))))
    if Double(lower) == x || lower == values.count - 1 { return Double(values[lower]) }
    let slope = Double(values[lower + 1]) - Double(values[lower])
    return slope * (x - Double(lower)) + Double(values[lower])
}

/// `EulerDiscreteScheduler` (diffusers): the reference model's own scheduler and the CLI's default.
public final class EulerScheduler: DiffusionScheduler {
    public let timesteps: [Double]
    /// σ for every step plus the final one.
    public let sigmas: [Float]
    public let initNoiseSigma: Float
    let predictionType: String

    public init(config: SchedulerConfig, steps: Int) {
        let n = config.trainTimesteps
        var ts: [Double]
        switch config.timestepSpacing {
        case "linspace":
            ts = (0..<steps).map { i in
                steps == 1 ? 0 : Double(Float(Double(n - 1) * Double(i) / Double(steps - 1)))
            }.reversed()
        case "trailing":
            let ratio = Double(n) / Double(steps)
            ts = Self.arange(from: Double(n), down: ratio).map { roundHalfEven($0) - 1 }
        default:  // leading
            let ratio = n / steps
            ts = (0..<steps).map { Double($0 * ratio + config.stepsOffset) }.reversed()
        }
        timesteps = ts
        let cumprod = config.alphasCumprod()
        let all = cumprod.map { (((1 - $0) / $0)).squareRoot() }
        let last: Float = config.finalSigmasType == "sigma_min" ? all[0] : 0
        sigmas = ts.map { Float(interpolate(all, at: $0)) } + [last]
        let maxSigma = sigmas.max() ?? 1
        initNoiseSigma = ["linspace", "trailing"].contains(config.timestepSpacing) ? maxSigma : (maxSigma * maxSigma + 1).squareRoot()
        predictionType = config.predictionType
    }

    /// np.arange(start, 0, −step).
    static func arange(from start: Double, down step: Double) -> [Double] {
        let count = Int((start / step).rounded(.up))
        return (0..<count).map { start - Double($0) * step }
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor {
        let sigma = sigmas[stepIndex]
        let scale = (sigma * sigma + 1).squareRoot()
        return sample.map { $0 / scale }
    }

    public func step(_ modelOutput: Tensor, stepIndex: Int, sample: Tensor) -> Tensor {
        let sigma = sigmas[stepIndex]
        let dt = sigmas[stepIndex + 1] - sigma
        var out = sample.scalars
        for i in 0..<out.count {
            let x = sample.scalars[i], e = modelOutput.scalars[i]
            let original = predictionType == "v_prediction"
                ? e * (-sigma / (sigma * sigma + 1).squareRoot()) + x / (sigma * sigma + 1)
                : x - sigma * e
            let derivative = (x - original) / sigma
            out[i] = x + derivative * dt
        }
        return Tensor(shape: sample.shape, scalars: out)
    }

    public func addNoise(_ original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        Tensor.combine(1, original, sigmas[stepIndex], noise)
    }
}

/// `DPMSolverMultistepScheduler` with diffusers' defaults for SD/SDXL: DPM-Solver++, second order, midpoint,
/// lower order at the end (`dpmpp2m`).
public final class DPMSolverPlusPlus2MScheduler: DiffusionScheduler {
    public let timesteps: [Double]
    public let sigmas: [Float]
    public let initNoiseSigma: Float = 1
    let config: SchedulerConfig
    private var modelOutputs: [Tensor] = []
    private var lowerOrderSteps = 0

    public init(config: SchedulerConfig, steps: Int) {
        self.config = config
        let n = config.trainTimesteps
        let last = n  // lambda_min_clipped = −inf clips nothing
        var ts: [Int]
        switch config.timestepSpacing {
        case "linspace":
            ts = Array((0...steps).map { i in Int(roundHalfEven(Double(last - 1) * Double(i) / Double(steps))) }.reversed().dropLast())
        case "trailing":
            ts = EulerScheduler.arange(from: Double(last), down: Double(n) / Double(steps)).map { Int(roundHalfEven($0)) - 1 }
        default:
            let ratio = last / (steps + 1)
            ts = Array((0...steps).map { $0 * ratio }.reversed().dropLast()).map { $0 + config.stepsOffset }
        }
        timesteps = ts.map(Double.init)
        let cumprod = config.alphasCumprod()
        let all = cumprod.map { (((1 - $0) / $0)).squareRoot() }
        let final: Float = config.finalSigmasType == "sigma_min" ? all[0] : 0
        sigmas = ts.map { all[$0] } + [final]
    }

    /// (α_t, σ_t, λ_t) of a σ.
    private func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float, lambda: Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        let s = sigma * alpha
        return (alpha, s, Float(log(Double(alpha))) - Float(log(Double(s))))
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    public func step(_ modelOutput: Tensor, stepIndex k: Int, sample: Tensor) -> Tensor {
        let count = timesteps.count
        let lowerOrderFinal = k == count - 1
            && (config.eulerAtFinal || (config.lowerOrderFinal && count < 15) || config.finalSigmasType == "zero")
        let lowerOrderSecond = k == count - 2 && config.lowerOrderFinal && count < 15
        _ = lowerOrderSecond  // with solver order ≤ 2 the second-order update is the highest there is

        // Model output → predicted x0 (DPM-Solver++).
        let current = alphaSigma(sigmas[k])
        let x0: Tensor = config.predictionType == "v_prediction"
            ? Tensor.combine(current.alpha, sample, -current.sigma, modelOutput)
            : Tensor(shape: sample.shape, scalars: zip(sample.scalars, modelOutput.scalars).map { ($0 - current.sigma * $1) / current.alpha })
        if modelOutputs.count == config.solverOrder { modelOutputs.removeFirst() }
        modelOutputs.append(x0)

        let target = alphaSigma(sigmas[k + 1])
        let h = target.lambda - current.lambda
        let expMinusH = Float(exp(Double(-h)))
        let result: Tensor
        if config.solverOrder == 1 || lowerOrderSteps < 1 || lowerOrderFinal {
            // x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·x0
            result = Tensor.combine(target.sigma / current.sigma, sample, -(target.alpha * (expMinusH - 1)), x0)
        } else {
            let previous = alphaSigma(sigmas[k - 1])
            let h0 = current.lambda - previous.lambda
            let r0 = h0 / h
            let m0 = modelOutputs[modelOutputs.count - 1], m1 = modelOutputs[modelOutputs.count - 2]
            let d1 = (1 / r0) * (m0 - m1)
            let a = target.alpha * (expMinusH - 1)
            var out = sample.scalars
            let ratio = target.sigma / current.sigma
            for i in 0..<out.count {
                out[i] = ratio * sample.scalars[i] - a * m0.scalars[i] - 0.5 * a * d1.scalars[i]
            }
            result = Tensor(shape: sample.shape, scalars: out)
        }
        if lowerOrderSteps < config.solverOrder { lowerOrderSteps += 1 }
        return result
    }

    public func addNoise(_ original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        let level = alphaSigma(sigmas[stepIndex])
        return Tensor.combine(level.alpha, original, level.sigma, noise)
    }
}

/// `DDIMScheduler` with η = 0 (deterministic).
public final class DDIMScheduler: DiffusionScheduler {
    public let timesteps: [Double]
    public let initNoiseSigma: Float = 1
    let cumprod: [Float]
    let finalCumprod: Float
    let stride: Int
    let config: SchedulerConfig

    public init(config: SchedulerConfig, steps: Int) {
        self.config = config
        let n = config.trainTimesteps
        switch config.timestepSpacing {
        case "linspace":
            timesteps = (0..<steps).map { i in
                steps == 1 ? 0 : roundHalfEven(Double(n - 1) * Double(i) / Double(steps - 1))
            }.reversed()
        case "trailing":
            timesteps = EulerScheduler.arange(from: Double(n), down: Double(n) / Double(steps)).map { roundHalfEven($0) - 1 }
        default:
            let ratio = n / steps
            timesteps = (0..<steps).map { Double($0 * ratio + config.stepsOffset) }.reversed()
        }
        cumprod = config.alphasCumprod()
        finalCumprod = config.setAlphaToOne ? 1 : cumprod[0]
        stride = n / steps
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    public func step(_ modelOutput: Tensor, stepIndex: Int, sample: Tensor) -> Tensor {
        let t = Int(timesteps[stepIndex])
        let previous = t - stride
        let alphaT = cumprod[t]
        let alphaPrevious = previous >= 0 ? cumprod[previous] : finalCumprod
        let betaT = 1 - alphaT
        var out = sample.scalars
        for i in 0..<out.count {
            let x = sample.scalars[i], e = modelOutput.scalars[i]
            var original: Float, epsilon: Float
            if config.predictionType == "v_prediction" {
                original = alphaT.squareRoot() * x - betaT.squareRoot() * e
                epsilon = alphaT.squareRoot() * e + betaT.squareRoot() * x
            } else {
                original = (x - betaT.squareRoot() * e) / alphaT.squareRoot()
                epsilon = e
            }
            if config.clipSample { original = min(max(original, -1), 1) }
            out[i] = alphaPrevious.squareRoot() * original + (1 - alphaPrevious).squareRoot() * epsilon
        }
        return Tensor(shape: sample.shape, scalars: out)
    }

    public func addNoise(_ original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        let alpha = cumprod[Int(timesteps[stepIndex])]
        return Tensor.combine(alpha.squareRoot(), original, (1 - alpha).squareRoot(), noise)
    }
}
