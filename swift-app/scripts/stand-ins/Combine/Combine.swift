// Stand-in for Apple's Combine, only for type-checking the app's model on Linux (scripts/typecheck-engine.sh).
@available(iOS 13.0, macOS 10.15, *)
public protocol ObservableObject: AnyObject {}

@available(iOS 13.0, macOS 10.15, *)
@propertyWrapper
public struct Published<Value> {
    public var wrappedValue: Value
    public init(wrappedValue: Value) { self.wrappedValue = wrappedValue }
    public var projectedValue: Published<Value> { self }
}
