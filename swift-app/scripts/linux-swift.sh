#!/usr/bin/env bash
# Build and test PocketSDKit's platform-independent core on Linux (what `make test-swift` runs first).
#
# Debian 12 has no Swift; Debian 13 (trixie) ships `swiftlang` (Swift 6.0.3). This script makes a minimal trixie
# chroot with it from Debian's own package registry (root, ~3.3 GB, a minute or two on a fast mirror), bind-mounts
# the repository inside, and runs `swift build` + `swift test` there. Build products stay in the chroot's /tmp,
# not in the repository, so a second run only rebuilds what changed.
#   usage: sudo swift-app/scripts/linux-swift.sh [test|build]      (default: test)
#   POCKETSD_SWIFT_CHROOT=DIR picks another chroot folder (default /opt/pocketsd-swift-trixie);
#   DEBIAN_MIRROR=URL another Debian mirror (default http://deb.debian.org/debian).
set -euo pipefail
ROOT=${POCKETSD_SWIFT_CHROOT:-/opt/pocketsd-swift-trixie}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
ACTION=${1:-test}
case "$ACTION" in test|build) ;; *) echo "usage: $0 [test|build]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "$0 needs root (debootstrap, chroot and a bind mount): run it with sudo" >&2; exit 2; }

# (usr/bin/swift is an absolute symbolic link into the chroot, so test the link, not its target)
if [ ! -L "$ROOT/usr/bin/swift" ] && [ ! -e "$ROOT/usr/bin/swift" ]; then
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    # Built aside and renamed when complete: an interrupted first run leaves no half chroot behind.
    PARTIAL="$ROOT.partial"
    for m in proc; do mountpoint -q "$PARTIAL/$m" 2>/dev/null && umount "$PARTIAL/$m"; done
    rm -rf "$PARTIAL"
    echo "making the Swift chroot in $ROOT (Debian trixie + swiftlang; first run only)"
    debootstrap --variant=minbase trixie "$PARTIAL" "$MIRROR" >/dev/null
    mount -t proc proc "$PARTIAL/proc"
    chroot "$PARTIAL" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$PARTIAL" apt-get install -y -qq --no-install-recommends \
        swiftlang libc6-dev libstdc++-14-dev ca-certificates >/dev/null
    chroot "$PARTIAL" apt-get clean
    umount "$PARTIAL/proc"
    mv "$PARTIAL" "$ROOT"
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mkdir -p "$ROOT/repo"
mountpoint -q "$ROOT/repo" || mount --bind "$REPO" "$ROOT/repo"
trap 'umount "$ROOT/repo" || true' EXIT

BUILD='swift build --build-tests --scratch-path /tmp/pocketsd-swift-build'
case "$ACTION" in
    build) chroot "$ROOT" bash -c "cd /repo/swift-app && swift build --scratch-path /tmp/pocketsd-swift-build" ;;
    test)  chroot "$ROOT" bash -c "cd /repo/swift-app && $BUILD && swift test --skip-build --scratch-path /tmp/pocketsd-swift-build" ;;
esac
