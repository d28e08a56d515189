#!/usr/bin/env bash
# Type-check the Apple-only parts of PocketSD on Linux: Sources/PocketSDKit/Engine, the tool's macOS path, and the
# app's non-SwiftUI files (GeneratorModel, GenerationWorker, BundleAccess, AppLifecycle), against the stand-in
# modules in scripts/stand-ins/ (CoreML, CoreGraphics, ImageIO, UniformTypeIdentifiers, Combine, UIKit, os, Apple's
# StableDiffusion package, and the Foundation calls swift-corelibs-foundation lacks), each reduced to the
# declarations our code calls. This finds mistakes in our code; it cannot find differences between the stand-ins and
# Apple's real SDKs, nor check availability (#available) or the SwiftUI views: Xcode does that.
# Runs inside the chroot made by scripts/linux-swift.sh.   usage: sudo swift-app/scripts/typecheck-engine.sh
set -euo pipefail
ROOT=${POCKETSD_SWIFT_CHROOT:-/opt/pocketsd-swift-trixie}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "$0 needs root (chroot and a bind mount): run it with sudo" >&2; exit 2; }
[ -L "$ROOT/usr/bin/swift" ] || [ -e "$ROOT/usr/bin/swift" ] || { echo "run scripts/linux-swift.sh first" >&2; exit 2; }
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mkdir -p "$ROOT/repo"
mountpoint -q "$ROOT/repo" || mount --bind "$REPO" "$ROOT/repo"
trap 'umount "$ROOT/repo" || true' EXIT

chroot "$ROOT" bash -euo pipefail -c '
W=/tmp/pocketsd-typecheck; S=/repo/swift-app
mkdir -p $W && find $W -mindepth 1 -maxdepth 2 -not -path "$W/.build*" -exec rm -rf {} + 2>/dev/null || true
mkdir -p $W/Sources/PocketSDKit/Resources $W/Sources/cli $W/Sources/appcore
for m in CoreGraphics CoreML ImageIO UniformTypeIdentifiers StableDiffusion Combine UIKit os; do
    mkdir -p $W/Sources/$m; ln -sf $S/scripts/stand-ins/$m/*.swift $W/Sources/$m/
done
find $S/Sources/PocketSDKit/Core $S/Sources/PocketSDKit/Engine -name "*.swift" -exec ln -sf {} $W/Sources/PocketSDKit/ \;
cp $S/Sources/PocketSDKit/Resources/domains.json $W/Sources/PocketSDKit/Resources/
ln -sf $S/Sources/pocketsd-swift/main.swift $W/Sources/cli/main.swift
for f in GenerationWorker GeneratorModel BundleAccess AppLifecycle; do ln -sf $S/PocketSDApp/$f.swift $W/Sources/appcore/; done
ln -sf $S/scripts/stand-ins/FoundationApple/FoundationApple.swift $W/Sources/appcore/
# The gates the Apple code sits behind must be open here, or nothing would be checked.
printf "#if !(canImport(CoreML) && canImport(StableDiffusion) && canImport(os))\n#error(\"engine gate closed\")\n#endif\n" > $W/Sources/PocketSDKit/Gate.swift
printf "#if !canImport(UIKit)\n#error(\"UIKit gate closed\")\n#endif\n" > $W/Sources/appcore/Gate.swift
cat > $W/Package.swift <<PKG
// swift-tools-version: 5.9
import PackageDescription
let package = Package(name: "typecheck", targets: [
    .target(name: "CoreGraphics"), .target(name: "CoreML"), .target(name: "UniformTypeIdentifiers"), .target(name: "os"),
    .target(name: "Combine"), .target(name: "UIKit"),
    .target(name: "ImageIO", dependencies: ["CoreGraphics"]),
    .target(name: "StableDiffusion", dependencies: ["CoreML", "CoreGraphics"]),
    .target(name: "PocketSDKit", dependencies: ["CoreML", "CoreGraphics", "ImageIO", "UniformTypeIdentifiers", "StableDiffusion", "os"],
            resources: [.copy("Resources/domains.json")]),
    .target(name: "appcore", dependencies: ["PocketSDKit", "CoreGraphics", "Combine", "UIKit"]),
    .executableTarget(name: "cli", dependencies: ["PocketSDKit", "StableDiffusion"]),
])
PKG
cd $W
if swift build > build.log 2>&1; then
    echo "typecheck: engine, command line tool and app model compiled against the stand-ins"
else
    grep -E "error|warning: unre" build.log | sort -u >&2
    echo "typecheck failed (full log: $W/build.log in the chroot)" >&2
    exit 1
fi
'
