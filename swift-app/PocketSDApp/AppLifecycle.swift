import Foundation
#if canImport(UIKit)
import UIKit
#endif

/// What a long run asks of the system on iPhone: the screen stays on, and leaving the app gets a little time to
/// stop cleanly (iOS does not let an app use the GPU or the Neural Engine in the background, and would suspend it
/// mid-step; the run is cancelled instead, its models unloaded and its journal closed). No-ops on the Mac.
@MainActor
final class AppLifecycle {
    #if canImport(UIKit)
    private var backgroundTask: UIBackgroundTaskIdentifier = .invalid
    #endif

    /// A run started: keep the screen on (a locked screen would suspend the app during a minutes-long first load).
    func runStarted() {
        #if canImport(UIKit)
        UIApplication.shared.isIdleTimerDisabled = true
        #endif
    }

    /// The run ended in any way: let the screen sleep again and give back the background time.
    func runEnded() {
        #if canImport(UIKit)
        UIApplication.shared.isIdleTimerDisabled = false
        endBackgroundTime()
        #endif
    }

    /// The app is leaving the foreground while a run goes: ask for time to finish stopping it.
    func requestBackgroundTime(expired: @escaping @MainActor () -> Void) {
        #if canImport(UIKit)
        guard backgroundTask == .invalid else { return }
        backgroundTask = UIApplication.shared.beginBackgroundTask(withName: "PocketSD stops its run") { [weak self] in
            Task { @MainActor in
                expired()
                self?.endBackgroundTime()
            }
        }
        #endif
    }

    private func endBackgroundTime() {
        #if canImport(UIKit)
        if backgroundTask != .invalid {
            UIApplication.shared.endBackgroundTask(backgroundTask)
            backgroundTask = .invalid
        }
        #endif
    }
}
