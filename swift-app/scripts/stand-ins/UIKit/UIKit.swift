// Stand-in for Apple's UIKit, only for type-checking the app's lifecycle code on Linux (scripts/typecheck-engine.sh).
@_exported import Foundation

@available(iOS 4.0, *)
@available(macOS, unavailable)
public struct UIBackgroundTaskIdentifier: Equatable, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let invalid = UIBackgroundTaskIdentifier(rawValue: 0)
}

@available(iOS 2.0, *)
@available(macOS, unavailable)
@MainActor
open class UIApplication {
    public static let shared = UIApplication()
    public var isIdleTimerDisabled = false
    @available(iOS 7.0, *)
    public func beginBackgroundTask(withName taskName: String?, expirationHandler handler: (@MainActor @Sendable () -> Void)? = nil) -> UIBackgroundTaskIdentifier { .invalid }
    @available(iOS 4.0, *)
    public func endBackgroundTask(_ identifier: UIBackgroundTaskIdentifier) {}
    public static let didReceiveMemoryWarningNotification = Notification.Name("UIApplicationDidReceiveMemoryWarningNotification")
}
