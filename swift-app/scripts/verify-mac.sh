#!/usr/bin/env bash
# Mac only: what the Linux checks cannot do (`make -C swift-app verify-mac`; .github/workflows/apple.yml runs the
# same steps on a macOS runner). Needs Xcode 16, xcodegen (brew install xcodegen) and the repository's .venv
# (`make setup` at the root). Writes into $OUT (default build/verify-mac at the repository root):
#   swift-test.log, xcodebuild-ios.log, xcodebuild-macos.log   the package's tests, both apps built
#   coreml/                                                     the reference model converted (pocketsd convert)
#   torch.{png,json} coreml-python.{png,json} coreml-swift.{png,json}   the same prompt and seed, three ways
#   verify-mac.json                                             stages, peak memory, compute plan, PSNR vs torch
# Nothing here has been run on a Mac by this project yet (there is none): the first run is the first check.
set -euo pipefail
if [ "$(uname)" != Darwin ]; then
    echo "verify-mac runs on a Mac only (Xcode, Core ML); on Linux use \`make test-swift\`" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$REPO/build/verify-mac}
PY=${PY:-$REPO/.venv/bin/python}
CLI=${CLI:-$REPO/.venv/bin/pocketsd}
PROMPT=${PROMPT:-a red circle on a white background}
SEED=${SEED:-1}
STEPS=${STEPS:-20}
mkdir -p "$OUT"
cd "$REPO/swift-app"

echo "== swift test"
swift test 2>&1 | tee "$OUT/swift-test.log"

echo "== the apps (xcodebuild, unsigned)"
make project
for target in "PocketSD|generic/platform=iOS Simulator|ios" "PocketSDMac|platform=macOS|macos"; do
    IFS='|' read -r scheme destination name <<<"$target"
    xcodebuild -project Xcode/PocketSD.xcodeproj -scheme "$scheme" -destination "$destination" \
        -derivedDataPath "$OUT/DerivedData" CODE_SIGNING_ALLOWED=NO build 2>&1 | tee "$OUT/xcodebuild-$name.log" | tail -5
done

echo "== the reference model, converted"
"$CLI" convert --out "$OUT/coreml"

echo "== the same prompt and seed: torch, the Python Core ML backend, pocketsd-swift"
"$CLI" generate "$PROMPT" --backend torch --seed "$SEED" --steps "$STEPS" --out "$OUT/torch.png" --report "$OUT/torch.json"
"$CLI" generate "$PROMPT" --model "$OUT/coreml" --backend coreml --seed "$SEED" --steps "$STEPS" \
    --out "$OUT/coreml-python.png" --report "$OUT/coreml-python.json"
swift build -c release
.build/release/pocketsd-swift generate "$PROMPT" --resources "$OUT/coreml" --seed "$SEED" --steps "$STEPS" \
    --out "$OUT/coreml-swift.png" --report "$OUT/coreml-swift.json"

"$PY" scripts/verify_mac_report.py --reference torch --run "torch=$OUT/torch.json" \
    --run "coreml-python=$OUT/coreml-python.json" --run "coreml-swift=$OUT/coreml-swift.json" --out "$OUT/verify-mac.json"
