import Foundation

/// One domain preset from `domains.json`, the file the Python CLI reads too
/// (`python/pocketsd/data/domains.json`; the package links it in as a resource).
public struct DomainPreset: Codable, Equatable, Identifiable, Sendable {
    public struct LoRA: Codable, Equatable, Sendable {
        public var file: String
        public var scale: Double
    }

    public var name: String
    public var title: String?
    public var description: String
    /// Contains `{prompt}` exactly once; the user's words replace it.
    public var promptTemplate: String
    public var negativePrompt: String
    public var steps: Int
    public var guidance: Double
    public var scheduler: String
    public var lora: LoRA?

    public var id: String { name }

    /// A label for pickers: the title if there is one, else the name.
    public var displayName: String { title ?? name }

    enum CodingKeys: String, CodingKey {
        case name, title, description, steps, guidance, scheduler, lora
        case promptTemplate = "prompt_template"
        case negativePrompt = "negative_prompt"
    }

    public init(name: String, title: String? = nil, description: String, promptTemplate: String,
                negativePrompt: String, steps: Int, guidance: Double, scheduler: String, lora: LoRA? = nil) {
        self.name = name
        self.title = title
        self.description = description
        self.promptTemplate = promptTemplate
        self.negativePrompt = negativePrompt
        self.steps = steps
        self.guidance = guidance
        self.scheduler = scheduler
        self.lora = lora
    }

    /// The prompt the model sees: the template with the user's words in place of `{prompt}`.
    public func expand(_ prompt: String) -> String {
        promptTemplate.replacingOccurrences(of: DomainCatalog.placeholder, with: prompt.trimmingCharacters(in: .whitespaces))
    }

    /// The function name `pocketsd convert --lora-functions` gives this LoRA: the file's stem with every run
    /// of non-word characters turned into "_" ("my-style.safetensors" → "my_style").
    public var loraFunctionName: String? {
        guard let stem = loraStem else { return nil }
        var name = ""
        var lastWasSeparator = false
        for ch in stem.unicodeScalars {
            let isWord = CharacterSet.alphanumerics.contains(ch) || ch == "_"
            if isWord { name.unicodeScalars.append(ch); lastWasSeparator = false }
            else if !lastWasSeparator { name += "_"; lastWasSeparator = true }
        }
        let trimmed = name.trimmingCharacters(in: CharacterSet(charactersIn: "_"))
        return trimmed.isEmpty ? "lora" : trimmed
    }

    /// The LoRA file's name without folder and extension ("poster.safetensors" → "poster").
    public var loraStem: String? {
        guard let file = lora?.file else { return nil }
        let last = file.split(separator: "/").last.map(String.init) ?? file
        if let dot = last.lastIndex(of: "."), dot != last.startIndex {
            return String(last[..<dot])
        }
        return last
    }
}

/// The list of presets, with the checks the Python side makes too.
public struct DomainCatalog: Codable, Equatable, Sendable {
    public static let placeholder = "{prompt}"

    public var format: String?
    public var version: Int?
    public var domains: [DomainPreset]

    public init(domains: [DomainPreset]) {
        self.format = "pocketsd-domains"
        self.version = 1
        self.domains = domains
    }

    public static func decode(_ data: Data) throws -> DomainCatalog {
        let catalog: DomainCatalog
        do {
            catalog = try JSONDecoder().decode(DomainCatalog.self, from: data)
        } catch {
            throw PocketSDError.badInput("domains.json cannot be read (\(error)); it must hold {\"domains\": [...]}")
        }
        try catalog.validate()
        return catalog
    }

    public static func load(from url: URL) throws -> DomainCatalog {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw PocketSDError.badInput("no domains file at \(url.path)")
        }
        return try decode(data)
    }

    /// The presets shipped inside PocketSDKit (the linked `domains.json`).
    public static func bundled() throws -> DomainCatalog {
        guard let url = Bundle.module.url(forResource: "domains", withExtension: "json") else {
            throw PocketSDError.badInput("PocketSDKit was built without domains.json; run `make sync-domains` in swift-app/")
        }
        return try load(from: url)
    }

    public func validate() throws {
        var seen = Set<String>()
        for preset in domains {
            if !seen.insert(preset.name).inserted {
                throw PocketSDError.badInput("domains.json names \"\(preset.name)\" twice")
            }
            let count = preset.promptTemplate.components(separatedBy: Self.placeholder).count - 1
            if count != 1 {
                throw PocketSDError.badInput("domain \"\(preset.name)\": prompt_template must contain {prompt} exactly once (found \(count))")
            }
            if preset.steps < 1 || preset.guidance < 0 {
                throw PocketSDError.badInput("domain \"\(preset.name)\": steps must be ≥ 1 and guidance ≥ 0")
            }
        }
    }

    public var names: [String] { domains.map(\.name) }

    /// The preset called `name`; an unknown name gets the list of known ones, as on the Python side.
    public func preset(named name: String) throws -> DomainPreset {
        if let preset = domains.first(where: { $0.name == name }) { return preset }
        throw PocketSDError.badInput("unknown domain \"\(name)\"; known: \(names.joined(separator: ", "))")
    }
}
