// Stand-in for Apple's UniformTypeIdentifiers, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
public struct UTType { public let identifier: String; public static let png = UTType(identifier: "public.png") }
