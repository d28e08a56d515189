// swift-tools-version: 5.9
// PocketSD for Swift: a library (PocketSDKit), a macOS command line tool (pocketsd-swift) and its tests.
// The SwiftUI app in PocketSDApp/ links PocketSDKit through XcodeGen's project.yml.

import PackageDescription

// Apple's StableDiffusion package (and Core ML under it) exists only on Apple platforms. On Linux the
// package builds without it: PocketSDKit then holds only its platform-independent core (the diffusion loop,
// schedulers, random numbers, manifest and memory plan, request, report, sketch cleaning), which is what
// `swift test` checks there. The manifest is compiled for the machine that builds, so `#if os(Linux)` here is a
// property of the build host. From Apple's package the engine uses `ManagedMLModel` and `BPETokenizer`.
#if os(Linux)
let engineDependencies: [Package.Dependency] = []
let engineProducts: [Target.Dependency] = []
#else
let engineDependencies: [Package.Dependency] = [
    .package(url: "https://github.com/apple/ml-stable-diffusion.git", from: "1.1.1"),
]
let engineProducts: [Target.Dependency] = [
    .product(name: "StableDiffusion", package: "ml-stable-diffusion"),
]
#endif

let package = Package(
    name: "PocketSDKit",
    platforms: [
        // The engine needs iOS 17 / macOS 14; multifunction UNets (LoRA styles) need 18 / 15 and compute plans
        // 17.4 / 14.4, both checked at run time.
        .macOS(.v14),
        .iOS(.v17),
    ],
    products: [
        .library(name: "PocketSDKit", targets: ["PocketSDKit"]),
        .executable(name: "pocketsd-swift", targets: ["pocketsd-swift"]),
    ],
    dependencies: engineDependencies,
    targets: [
        .target(
            name: "PocketSDKit",
            dependencies: engineProducts,
            resources: [
                // A copy of python/pocketsd/data/domains.json made by `make sync-domains` (SwiftPM copies
                // symbolic links verbatim, so a link would dangle inside the app); a test fails when it drifts.
                .copy("Resources/domains.json"),
            ]
        ),
        .executableTarget(
            name: "pocketsd-swift",
            // main.swift gates its Core ML path on canImport(StableDiffusion): declared here, not left to the
            // library's transitive products (which a module import is not guaranteed to see).
            dependencies: ["PocketSDKit"] + engineProducts
        ),
        .testTarget(
            name: "PocketSDKitTests",
            dependencies: ["PocketSDKit"],
            // Numbers from the Python side (scripts/make_fixtures.py), read by path: not bundle resources.
            exclude: ["Fixtures"]
        ),
    ]
)
