#!/usr/bin/env bash
# Type-check the Apple-only parts of PocketSDKit (Sources/PocketSDKit/Engine, the tool's macOS path and the app's
# GenerationWorker) on Linux, against the stand-in modules in scripts/stand-ins/ (CoreML, CoreGraphics, ImageIO,
# UniformTypeIdentifiers and Apple's StableDiffusion package reduced to the declarations our code calls).
# This finds mistakes in our code; it cannot find differences between the stand-ins and Apple's real SDKs.
# Runs inside the chroot made by scripts/linux-swift.sh.   usage: sudo swift-app/scripts/typecheck-engine.sh
set -euo pipefail
ROOT=${POCKETSD_SWIFT_CHROOT:-/opt/pocketsd-swift-trixie}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
[ -L "$ROOT/usr/bin/swift" ] || [ -e "$ROOT/usr/bin/swift" ] || { echo "run scripts/linux-swift.sh first" >&2; exit 2; }
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mkdir -p "$ROOT/repo"
mountpoint -q "$ROOT/repo" || mount --bind "$REPO" "$ROOT/repo"
trap 'umount "$ROOT/repo" || true' EXIT

chroot "$ROOT" bash -euo pipefail -c '
W=/tmp/pocketsd-typecheck; rm -rf $W; mkdir -p $W/Sources/PocketSDKit/Resources $W/Sources/cli $W/Sources/appcore
for m in CoreGraphics CoreML ImageIO UniformTypeIdentifiers StableDiffusion; do
    mkdir -p $W/Sources/$m; ln -s /repo/swift-app/scripts/stand-ins/$m/*.swift $W/Sources/$m/
done
ln -s /repo/swift-app/Sources/PocketSDKit/Core/*.swift /repo/swift-app/Sources/PocketSDKit/Engine/*.swift $W/Sources/PocketSDKit/
cp /repo/swift-app/Sources/PocketSDKit/Resources/domains.json $W/Sources/PocketSDKit/Resources/
ln -s /repo/swift-app/Sources/pocketsd-swift/main.swift $W/Sources/cli/main.swift
ln -s /repo/swift-app/PocketSDApp/GenerationWorker.swift $W/Sources/appcore/
# The gate the engine sits behind must be open here, or nothing would be checked.
printf "#if !(canImport(CoreML) && canImport(StableDiffusion))\n#error(\"engine gate closed\")\n#endif\n" > $W/Sources/PocketSDKit/Gate.swift
cat > $W/Package.swift <<PKG
// swift-tools-version: 5.9
import PackageDescription
let package = Package(name: "typecheck", targets: [
    .target(name: "CoreGraphics"), .target(name: "CoreML"), .target(name: "UniformTypeIdentifiers"),
    .target(name: "ImageIO", dependencies: ["CoreGraphics"]),
    .target(name: "StableDiffusion", dependencies: ["CoreML", "CoreGraphics"]),
    .target(name: "PocketSDKit", dependencies: ["CoreML", "CoreGraphics", "ImageIO", "UniformTypeIdentifiers", "StableDiffusion"],
            resources: [.copy("Resources/domains.json")]),
    .target(name: "appcore", dependencies: ["PocketSDKit", "CoreGraphics"]),
    .executableTarget(name: "cli", dependencies: ["PocketSDKit", "StableDiffusion"]),
])
PKG
cd $W && swift build
'
