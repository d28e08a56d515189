// Stand-in for Apple's UniformTypeIdentifiers, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
@available(iOS 14.0, macOS 11.0, *)
public struct UTType { public let identifier: String; public static let png = UTType(identifier: "public.png") }
