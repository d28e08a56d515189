"""The Swift side's ControlNet guidance window against the Python loop's rule (issue 23, parity with the CLI).

swift-app/Tests/PocketSDKitTests/Fixtures/control_guidance.json holds, for a grid of step counts and [start, end]
shares, which steps Python's `control_active` lets the ControlNet steer; CLIParityTests.swift holds Swift's
`DiffusionLoop.controlActive` to the same file. This test holds the file to Python: if the Python rule changes,
it fails until the fixture is written again (run this file's `expected()` and dump it as the fixture does).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pocketsd.pipeline.generate import control_active

FIXTURE = Path(__file__).resolve().parents[1] / "swift-app" / "Tests" / "PocketSDKitTests" / "Fixtures" / "control_guidance.json"
SHARES = ((0.0, 1.0), (0.25, 0.75), (0.0, 0.5), (0.34, 1.0), (0.1, 0.9), (0.5, 0.55), (0.2, 0.3))


def expected() -> list[dict]:
    return [{"steps": n, "start": start, "end": end, "active": [control_active(i, n, start, end) for i in range(n)]}
            for n in (1, 3, 4, 10, 20, 25) for start, end in SHARES]


def test_fixture_is_what_the_python_loop_does():
    cases = json.loads(FIXTURE.read_text())["cases"]
    assert cases == expected()
    # the grid exercises both edges: steps cut at the start, at the end, and none at all
    assert any(not any(c["active"]) for c in cases) and any(not c["active"][0] and c["active"][-1] for c in cases)
    assert any(c["active"][0] and not c["active"][-1] for c in cases)


def swift_constant(name: str) -> str:
    source = (FIXTURE.parents[3] / "Sources" / "PocketSDKit" / "Core" / "GenerationRequest.swift").read_text()
    match = re.search(rf"public static let {name} = ([^\n]+)", source)
    assert match, name
    return match.group(1).strip()


def test_defaults_are_the_python_clis():
    # One set of defaults on both sides: the Swift constants are checked against the Python ones they copy.
    from pocketsd.pipeline import inputs, options

    assert int(swift_constant("defaultSteps")) == options.DEFAULT_STEPS
    assert float(swift_constant("defaultGuidance")) == options.DEFAULT_GUIDANCE
    assert swift_constant("defaultScheduler") == f"SchedulerKind.{options.DEFAULT_SCHEDULER}"
    assert float(swift_constant("defaultImageStrength")) == options.DEFAULT_STRENGTH
    assert float(swift_constant("defaultSketchStrength")) == inputs.SKETCH_STRENGTH
    assert float(swift_constant("defaultMaskStrength")) == options.DEFAULT_INPAINT_STRENGTH
    assert float(swift_constant("maxControlNetScale")) == options.MAX_CONTROLNET_SCALE
    assert int(swift_constant("defaultMaskBlur")) == options.MASK_BLUR
    assert int(swift_constant("maxMaskBlur")) == options.MAX_MASK_BLUR


def test_inpainting_fixture_is_what_the_python_side_does():
    # Fixtures/inpaint.json (CLIParityTests.testInpaintingMatchesThePythonLoop holds Swift to it) made again by
    # the Python side's load_mask, latent_mask and loop over the fake networks: the same numbers.
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURE.parents[3] / "scripts" / "make_fixtures.py")
    make_fixtures = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_fixtures", make_fixtures)
    spec.loader.exec_module(make_fixtures)
    stored = json.loads((FIXTURE.parent / "inpaint.json").read_text())
    assert json.loads(json.dumps(make_fixtures.inpaint_fixture())) == stored
