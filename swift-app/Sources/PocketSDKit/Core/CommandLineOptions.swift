import Foundation

/// What `pocketsd-swift` was asked to do.
///
/// Parsed by hand rather than with swift-argument-parser so that PocketSDKit has no dependency at all on
/// Linux, where its tests run without network access to fetch packages; the grammar is small (flags of
/// `pocketsd generate`, two listing commands) and every rule is tested in CommandLineOptionsTests.
public enum PocketSDCommand: Equatable {
    case generate(GenerateOptions)
    /// `domains [--domains FILE] [--json]`
    case domains(file: String?, json: Bool)
    /// `info RESOURCES`: layout and manifest of a bundle, without loading any model.
    case info(path: String)
    case help
    case version
}

public struct GenerateOptions: Equatable {
    public var request: GenerationRequest
    public var resources: String
    public var out: String?
    public var report: String?
    public var domainsFile: String?
    /// Images with seeds S, S+1, … (the models load once).
    public var count: Int = 1

    /// The image path: `--out`, or `pocketsd-<seed>.png` in the current folder as the Python CLI does; with
    /// `--count` above 1 each file gets its seed appended (`out-7.png`).
    public func outputPath(seed: UInt32) -> String {
        guard let out else { return "pocketsd-\(seed).png" }
        return count > 1 ? Self.appending(seed, to: out) : out
    }

    /// The report path: `--report` (seed appended with `--count`), or the image path with `.json`.
    public func reportPath(seed: UInt32) -> String {
        if let report { return count > 1 ? Self.appending(seed, to: report) : report }
        let image = outputPath(seed: seed)
        if image.lowercased().hasSuffix(".png") { return String(image.dropLast(4)) + ".json" }
        return image + ".json"
    }

    static func appending(_ seed: UInt32, to path: String) -> String {
        let url = URL(fileURLWithPath: path)
        let ext = url.pathExtension
        let stem = url.deletingPathExtension().lastPathComponent
        let name = ext.isEmpty ? "\(stem)-\(seed)" : "\(stem)-\(seed).\(ext)"
        let folder = (path as NSString).deletingLastPathComponent
        return folder.isEmpty ? name : (folder as NSString).appendingPathComponent(name)
    }
}

public enum CommandLineOptions {
    public static let usage = """
    usage: pocketsd-swift generate PROMPT --resources DIR [options]
           pocketsd-swift domains [--domains FILE] [--json]
           pocketsd-swift info DIR

    generate options (as `pocketsd generate`):
      --resources DIR          a `pocketsd convert` bundle (its folder or Resources/); .mlpackage files are compiled once
      --steps N                denoising steps (default: the domain's, else 20)
      --guidance G             classifier-free guidance scale (default: the domain's, else 5.0)
      --seed S                 random seed, 0…4294967295 (default: random); the same noise as `pocketsd generate`
      --negative TEXT          negative prompt (default: the domain's, else none)
      --scheduler NAME         euler | dpmpp2m | ddim (default: the domain's, else euler)
      --domain NAME            a preset from domains.json (see `pocketsd-swift domains`)
      --function NAME          a multifunction UNet's function (default: the domain's LoRA, else the bundle's default)
      --compute-units U        all | cpu_only | cpu_and_gpu | cpu_and_ne (default: all on a Mac, cpu_and_ne on iOS)
      --size WxH               checked against the bundle's fixed size
      --image FILE             start from an image (image → image)
      --mask FILE              with --image: repaint where the mask is white (inpainting)
      --mask-blur N            px the paste-back feathers outside the mask, 0…64 (default 4)
      --no-paste-back          keep the generated pixels outside the mask too
      --sketch FILE            start from a line drawing (cleaned, filled, then image → image)
      --strength F             share of the schedule re-run from the image, in (0, 1] (0.8 / sketch 0.65 / mask 1.0)
      --controlnet NAME        a ControlNet shipped in the bundle (Resources/controlnet/NAME), steered by --sketch's
                               strokes or by --image; the run then starts from noise (as `pocketsd generate`)
      --controlnet-scale F     the ControlNet's weight, 0…10 (default 1)
      --control-guidance-start F  share of the steps before the ControlNet starts, 0…1 (default 0)
      --control-guidance-end F    share of the steps after which the ControlNet stops, 0…1 (default 1)
      --count N                N images with seeds S, S+1, … (the models load once)
      --low-memory             load each model for its stage only, text encoders one at a time (default on iOS)
      --out FILE               the PNG (default: pocketsd-<seed>.png)
      --report FILE            the JSON report (default: the PNG's path with .json)
      --domains FILE           a domains.json other than the one built in
    """

    /// Parses the arguments after the program name. Throws `PocketSDError.badInput` with one line.
    public static func parse(_ arguments: [String]) throws -> PocketSDCommand {
        guard let command = arguments.first else { return .help }
        let rest = Array(arguments.dropFirst())
        switch command {
        case "-h", "--help", "help": return .help
        case "--version", "version": return .version
        case "generate": return .generate(try parseGenerate(rest))
        case "domains":
            var parser = Parser(rest)
            var file: String?
            var json = false
            while let arg = parser.next() {
                switch arg {
                case "--domains": file = try parser.value(for: arg)
                case "--json": json = true
                default: throw PocketSDError.badInput("unknown option \(arg) for `domains`")
                }
            }
            return .domains(file: file, json: json)
        case "info":
            guard rest.count == 1, !rest[0].hasPrefix("-") else {
                throw PocketSDError.badInput("`info` takes one bundle folder: pocketsd-swift info DIR")
            }
            return .info(path: rest[0])
        default:
            throw PocketSDError.badInput("unknown command \(command); use generate, domains or info (--help for options)")
        }
    }

    static func parseGenerate(_ arguments: [String]) throws -> GenerateOptions {
        var parser = Parser(arguments)
        var prompt: String?
        var resources: String?
        var out: String?
        var report: String?
        var domainsFile: String?
        var count = 1
        var request = GenerationRequest(prompt: "")
        while let arg = parser.next() {
            if !arg.hasPrefix("--") || arg == "--" {
                let word = arg == "--" ? try parser.value(for: "--") : arg
                if prompt != nil { throw PocketSDError.badInput("give one prompt (quote it): extra argument \"\(word)\"") }
                prompt = word
                continue
            }
            switch arg {
            case "--resources", "--model": resources = try parser.value(for: arg)
            case "--steps": request.steps = try parser.int(for: arg)
            case "--guidance": request.guidance = try parser.double(for: arg)
            case "--seed":
                let text = try parser.value(for: arg)
                guard let seed = UInt32(text) else {
                    throw PocketSDError.badInput("--seed must be a whole number from 0 to \(UInt32.max), got \(text)")
                }
                request.seed = seed
            case "--negative": request.negativePrompt = try parser.value(for: arg)
            case "--scheduler": request.scheduler = try SchedulerKind.resolve(try parser.value(for: arg)).rawValue
            case "--domain": request.domain = try parser.value(for: arg)
            case "--function": request.unetFunction = try parser.value(for: arg)
            case "--compute-units":
                let text = try parser.value(for: arg)
                guard let units = ComputeUnitsChoice(rawValue: text) else {
                    throw PocketSDError.badInput("--compute-units must be one of \(ComputeUnitsChoice.allCases.map(\.rawValue).joined(separator: ", ")), got \(text)")
                }
                request.computeUnits = units
            case "--size": request.size = try parseSize(try parser.value(for: arg))
            case "--image": request.imagePath = try parser.value(for: arg)
            case "--sketch": request.sketchPath = try parser.value(for: arg)
            case "--strength": request.strength = try parser.double(for: arg)
            case "--mask": request.maskPath = try parser.value(for: arg)
            case "--mask-blur": request.maskBlur = try parser.int(for: arg)
            case "--no-paste-back": request.pasteBack = false
            case "--controlnet": request.controlNet = try parser.value(for: arg)
            case "--controlnet-scale": request.controlScale = try parser.double(for: arg)
            case "--control-guidance-start": request.controlGuidanceStart = try parser.double(for: arg)
            case "--control-guidance-end": request.controlGuidanceEnd = try parser.double(for: arg)
            case "--control-scale":
                // the name this tool had before it took the Python CLI's
                throw PocketSDError.badInput("--control-scale is called --controlnet-scale, as in `pocketsd generate`")
            case "--count":
                count = try parser.int(for: arg)
                if count < 1 || count > 1000 { throw PocketSDError.badInput("--count must be between 1 and 1000, got \(count)") }
            case "--low-memory": request.lowMemory = true
            case "--no-low-memory": request.lowMemory = false
            case "--out": out = try parser.value(for: arg)
            case "--report": report = try parser.value(for: arg)
            case "--domains": domainsFile = try parser.value(for: arg)
            case "--backend":
                let backend = try parser.value(for: arg)
                if backend != "coreml" && backend != "auto" {
                    throw PocketSDError.badInput("pocketsd-swift runs Core ML bundles only (--backend coreml); use `pocketsd generate --backend \(backend)`")
                }
            case "--lora":
                throw PocketSDError.badInput("--lora is not loaded at run time by the Swift app: LoRAs come in the bundle "
                                             + "(`pocketsd convert --lora` / `--lora-functions`, chosen with --domain or --function)")
            default:
                throw PocketSDError.badInput("unknown option \(arg) (pocketsd-swift --help lists them)")
            }
        }
        guard let prompt, !prompt.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw PocketSDError.badInput("say what to draw: pocketsd-swift generate \"a red circle on a white background\" --resources DIR")
        }
        guard let resources else {
            throw PocketSDError.badInput("--resources DIR is required: the Resources/ folder of a compiled `pocketsd convert` bundle")
        }
        request.prompt = prompt
        var options = GenerateOptions(request: request, resources: resources, out: out, report: report, domainsFile: domainsFile)
        options.count = count
        return options
    }

    /// "128x128" → (128, 128); both sides multiples of 8 (the VAE's factor).
    public static func parseSize(_ text: String) throws -> (width: Int, height: Int) {
        let parts = text.lowercased().split(separator: "x").map { Int($0) }
        guard parts.count == 2, let w = parts[0], let h = parts[1], w > 0, h > 0, w % 8 == 0, h % 8 == 0 else {
            throw PocketSDError.badInput("--size must be WxH with both sides positive multiples of 8, got \(text)")
        }
        return (w, h)
    }

    struct Parser {
        private var items: [String]
        private var index = 0
        init(_ items: [String]) { self.items = items }

        mutating func next() -> String? {
            guard index < items.count else { return nil }
            defer { index += 1 }
            // --flag=value is split so both spellings work.
            let item = items[index]
            if item.hasPrefix("--"), let eq = item.firstIndex(of: "=") {
                items.insert(String(item[item.index(after: eq)...]), at: index + 1)
                return String(item[..<eq])
            }
            return item
        }

        mutating func value(for flag: String) throws -> String {
            guard let v = next() else { throw PocketSDError.badInput("\(flag) needs a value") }
            return v
        }

        mutating func int(for flag: String) throws -> Int {
            let text = try value(for: flag)
            guard let v = Int(text) else { throw PocketSDError.badInput("\(flag) must be a whole number, got \(text)") }
            return v
        }

        mutating func double(for flag: String) throws -> Double {
            let text = try value(for: flag)
            guard let v = Double(text), v.isFinite else { throw PocketSDError.badInput("\(flag) must be a number, got \(text)") }
            return v
        }
    }
}
