import SwiftUI
#if os(iOS)
import UIKit
#endif

/// PocketSD sample app: SDXL compressed to 4-bit weights, on device through Core ML.
@main
struct PocketSDApp: App {
    @StateObject private var model = GeneratorModel()
    @Environment(\.scenePhase) private var scenePhase

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environmentObject(model)
                #if os(iOS)
                // Jetsam ends an app past its memory limit without asking: drop idle models first.
                .onReceive(NotificationCenter.default.publisher(for: UIApplication.didReceiveMemoryWarningNotification)) { _ in
                    model.didReceiveMemoryWarning()
                }
                #endif
        }
        .onChange(of: scenePhase) { _, phase in
            if phase == .background { model.didEnterBackground() }
        }
    }
}
