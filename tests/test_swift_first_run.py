"""Source checks on the Swift app's Apple-only code (GenerationWorker, the command line run, BundleAccess): what
swift-app/Tests cannot run on Linux because Core ML and the app's files are not compiled there, and what the
type-check against the stand-ins cannot see because it is about order, not types. Issue 23, items 3 and 5.

The platform-independent halves (ReportFiles.rewriteReport, FolderAccess.open) have XCTests in
swift-app/Tests/PocketSDKitTests/FirstRunTests.swift; these checks make sure the Apple-only callers use them.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

SWIFT_APP = Path(__file__).resolve().parents[1] / "swift-app"

_spec = importlib.util.spec_from_file_location("check_availability", SWIFT_APP / "scripts" / "check_availability.py")
check_availability = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_availability", check_availability)  # dataclasses look their module up there
_spec.loader.exec_module(check_availability)


def code_of(text: str) -> str:
    """Comments and string literals blanked, so a comment that names a call is not the call."""
    return check_availability.blank_comments_and_strings(text)


def report_order_problems(text: str) -> list[str]:
    """The image and its report must be on disk before the compute plan is read, and the report rewritten after."""
    code = code_of(text)
    write = code.find("ReportFiles.write(")
    attach = code.find("attachComputePlans(")
    rewrite = code.find("ReportFiles.rewriteReport(")
    problems = []
    if write < 0:
        problems.append("no ReportFiles.write(")
    if attach < 0:
        problems.append("no attachComputePlans(")
    if rewrite < 0:
        problems.append("no ReportFiles.rewriteReport( after the plan")
    if write >= 0 and attach >= 0 and write > attach:
        problems.append("the compute plan is read before the PNG and JSON are written")
    if attach >= 0 and rewrite >= 0 and rewrite < attach:
        problems.append("the report is rewritten before the plan is attached")
    return problems


# The shape both callers had before the fix (GenerationWorker.swift:120-122, CommandLineGeneration.swift:68-69).
BEFORE = """
    var report = output.report
    waitFor { await engine.attachComputePlans(to: &report, settings: settings) }
    try ReportFiles.write(png: output.png, report: report, to: pair)
"""


def test_the_order_check_refuses_the_old_order():
    assert "the compute plan is read before the PNG and JSON are written" in report_order_problems(BEFORE)
    assert "no ReportFiles.rewriteReport( after the plan" in report_order_problems(BEFORE)


def test_worker_and_command_line_write_the_pair_before_the_compute_plan():
    for path in (SWIFT_APP / "PocketSDApp" / "GenerationWorker.swift",
                 SWIFT_APP / "Sources" / "PocketSDKit" / "Engine" / "CommandLineGeneration.swift"):
        assert report_order_problems(path.read_text()) == [], path.name


def test_the_worker_skips_the_plan_after_a_cancel():
    code = code_of((SWIFT_APP / "PocketSDApp" / "GenerationWorker.swift").read_text())
    guard = code.find("guard !cancel.isCancelled")
    assert 0 <= guard < code.find("attachComputePlans("), "the uncancellable plan is not started after a cancel"


def scope_problems(text: str) -> list[str]:
    """Every startAccessingSecurityScopedResource() goes through FolderAccess.open, which treats false as
    'no scope needed' and refuses only a folder it cannot read."""
    code = code_of(text)
    problems = []
    for m in re.finditer(r"startAccessingSecurityScopedResource\s*\(", code):
        line_start = code.rfind("\n", 0, m.start()) + 1
        line = code[line_start:code.find("\n", m.start())]
        if "FolderAccess.open(" not in line:
            problems.append(f"line {code.count(chr(10), 0, m.start()) + 1}: {line.strip()}")
    return problems


def test_the_scope_check_refuses_the_old_guard():
    before = """
        guard url.startAccessingSecurityScopedResource() else {
            throw PocketSDError.badInput("choose the folder again")
        }
    """
    assert len(scope_problems(before)) == 1


def test_a_false_security_scope_is_not_fatal_in_the_app():
    text = (SWIFT_APP / "PocketSDApp" / "BundleAccess.swift").read_text()
    assert scope_problems(text) == []
    assert code_of(text).count("FolderAccess.open(") == 2, "remember() and restore() both open through FolderAccess"
    # and the scope is stopped only when one was opened
    assert re.search(r"scoped\s*=\s*opened\.scoped\s*\?\s*url\s*:\s*nil", code_of(text))


def test_icloud_status_comes_from_resource_values():
    code = code_of((SWIFT_APP / "Sources" / "PocketSDKit" / "Core" / "ModelDelivery.swift").read_text())
    assert ".ubiquitousItemDownloadingStatusKey" in code and "ubiquitousItemDownloadingStatus" in code
    # the download loop in the app polls the same function
    app = code_of((SWIFT_APP / "PocketSDApp" / "BundleAccess.swift").read_text())
    assert app.count("ICloudFiles.placeholders(under:") == 2
