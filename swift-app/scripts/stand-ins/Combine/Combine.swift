// Stand-in for Apple's Combine, only for type-checking the app's model on Linux (scripts/typecheck-engine.sh).
public protocol ObservableObject: AnyObject {}

@propertyWrapper
public struct Published<Value> {
    public var wrappedValue: Value
    public init(wrappedValue: Value) { self.wrappedValue = wrappedValue }
    public var projectedValue: Published<Value> { self }
}
