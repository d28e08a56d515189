#!/usr/bin/env bash
# Build and test PocketSDKit's platform-independent core on Linux.
#
# Debian 12 has no Swift; Debian 13 (trixie) ships `swiftlang` (Swift 6.0.3). This script makes a minimal
# trixie chroot with it (root, ~2.5 GB, a few minutes on first use), bind-mounts the repository inside, and
# runs `swift build` + `swift test` there. Build products go to /tmp in the chroot, not into the repository.
#   usage: sudo swift-app/scripts/linux-swift.sh [test|build]      (default: test)
set -euo pipefail
ROOT=${POCKETSD_SWIFT_CHROOT:-/opt/pocketsd-swift-trixie}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
ACTION=${1:-test}

# (usr/bin/swift is an absolute symbolic link into the chroot, so test the link, not its target)
if [ ! -L "$ROOT/usr/bin/swift" ] && [ ! -e "$ROOT/usr/bin/swift" ]; then
    command -v debootstrap >/dev/null || apt-get install -y debootstrap
    debootstrap --variant=minbase trixie "$ROOT" http://deb.debian.org/debian
    chroot "$ROOT" apt-get update
    DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y --no-install-recommends \
        swiftlang libc6-dev libstdc++-14-dev ca-certificates
fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mkdir -p "$ROOT/repo"
mountpoint -q "$ROOT/repo" || mount --bind "$REPO" "$ROOT/repo"
trap 'umount "$ROOT/repo" || true' EXIT

case "$ACTION" in
    build) chroot "$ROOT" bash -c 'cd /repo/swift-app && swift build --scratch-path /tmp/pocketsd-swift-build' ;;
    test)  chroot "$ROOT" bash -c 'cd /repo/swift-app && swift build --build-tests --scratch-path /tmp/pocketsd-swift-build && swift test --skip-build --scratch-path /tmp/pocketsd-swift-build' ;;
    *) echo "usage: $0 [test|build]" >&2; exit 2 ;;
esac
