import Foundation

/// Any JSON document, kept as a tree.
///
/// The bundle manifest (`pocketsd.json`) is written by the Python converter and grows with it. Reading it as
/// a tree and picking the few fields the app needs (see `BundleManifest`) keeps the app working when the
/// converter adds fields, instead of failing a strict `Decodable` on the first unknown or reshaped key.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// Whole numbers stay integers so that counts, seeds and shapes print as `20`, not `20.0`.
    case integer(Int)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public subscript(key: String) -> JSONValue? {
        if case .object(let dict) = self { return dict[key] }
        return nil
    }

    /// Follows a path of object keys, e.g. `value[path: "vae", "scaling_factor"]`.
    public subscript(path keys: String...) -> JSONValue? {
        var node: JSONValue? = self
        for key in keys { node = node?[key] }
        return node
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var double: Double? {
        switch self {
        case .integer(let i): return Double(i)
        case .number(let n): return n
        case .string(let s): return Double(s)
        default: return nil
        }
    }

    public var int: Int? {
        if case .integer(let i) = self { return i }
        guard let d = double, d.rounded() == d, abs(d) < 1e15 else { return nil }
        return Int(d)
    }

    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var array: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var object: [String: JSONValue]? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var isNull: Bool { self == .null }

    /// Numbers compare by value: a file read back holds `3` where the writer had `3.0`.
    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)): return x == y
        case (.integer, _), (.number, _):
            guard let x = a.double, let y = b.double, b.isNumber else { return false }
            return x == y
        default: return false
        }
    }

    var isNumber: Bool {
        switch self {
        case .integer, .number: return true
        default: return false
        }
    }

    /// `[Int]` from an array of whole numbers (shapes, sizes); nil if any element is not one.
    public var intArray: [Int]? {
        guard let items = array else { return nil }
        let ints = items.compactMap(\.int)
        return ints.count == items.count ? ints : nil
    }

    public var stringArray: [String]? {
        guard let items = array else { return nil }
        let strings = items.compactMap(\.string)
        return strings.count == items.count ? strings : nil
    }

    public static func parse(_ data: Data) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: data)
    }
}

extension JSONValue: Codable {
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let b = try? container.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? container.decode(Int.self) {
            self = .integer(i)
        } else if let n = try? container.decode(Double.self) {
            self = .number(n)
        } else if let s = try? container.decode(String.self) {
            self = .string(s)
        } else if let a = try? container.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let b): try container.encode(b)
        case .integer(let i): try container.encode(i)
        case .number(let n): try container.encode(n)
        case .string(let s): try container.encode(s)
        case .array(let a): try container.encode(a)
        case .object(let o): try container.encode(o)
        }
    }
}
