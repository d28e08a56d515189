"""swift-app/scripts/check_availability.py: the availability check `make test-swift` runs on the Apple-only Swift code.

Swift on Linux ignores iOS / macOS availability, so these tests plant small Swift files and check that the source
check refuses what Xcode would refuse (an API newer than the deployment target outside `#available` / `@available`,
an API used on a platform that lacks it) and accepts the guarded forms; and that the real tree passes.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

SWIFT_APP = Path(__file__).resolve().parents[1] / "swift-app"
CHECKER = SWIFT_APP / "scripts" / "check_availability.py"


def check(tmp_path: Path, source: str, *extra: str, root: Path = SWIFT_APP) -> subprocess.CompletedProcess:
    planted = tmp_path / "Planted.swift"
    planted.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(CHECKER), "--root", str(root), "--no-stand-ins", *extra, str(planted)],
                          capture_output=True, text=True, timeout=60)


# The shape of ComputePlanProbe.summarize before the fix: an iOS 18 property read in a 17.4 function.
PROBE = """
    import CoreML

    enum Probe {
        @available(iOS 17.4, macOS 14.4, *)
        static func summarize(configuration: MLModelConfiguration) async throws -> String {
            let name = configuration.functionName ?? "main"
            return name
        }
    }
"""


def test_flags_function_name_in_a_17_4_scope(tmp_path):
    result = check(tmp_path, PROBE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Planted.swift:7: MLModelConfiguration.functionName needs iOS 18.0" in result.stderr
    assert "macOS 15.0" in result.stderr
    assert "1 finding(s)" in result.stderr


def test_accepts_function_name_inside_if_available(tmp_path):
    guarded = PROBE.replace(
        'let name = configuration.functionName ?? "main"',
        'var name = "main"\n            if #available(iOS 18.0, macOS 15.0, *) { name = configuration.functionName ?? name }')
    result = check(tmp_path, guarded)
    assert result.returncode == 0, result.stderr
    assert "every newer API is guarded" in result.stdout


def test_else_branch_of_if_available_is_not_covered(tmp_path):
    result = check(tmp_path, """
        import CoreML
        func pick(_ c: MLModelConfiguration) -> String? {
            if #available(iOS 18.0, macOS 15.0, *) {
                return c.functionName
            } else {
                return c.functionName
            }
        }
    """)
    assert result.returncode == 1
    assert "Planted.swift:7:" in result.stderr and "Planted.swift:5:" not in result.stderr


def test_guard_available_covers_the_rest_of_the_block_only(tmp_path):
    result = check(tmp_path, """
        import CoreML
        func plan(_ url: URL, _ c: MLModelConfiguration) async throws {
            guard #available(iOS 17.4, macOS 14.4, *) else { return }
            _ = try await MLComputePlan.load(contentsOf: url, configuration: c)
        }
        func early(_ url: URL, _ c: MLModelConfiguration) async throws {
            _ = try await MLComputePlan.load(contentsOf: url, configuration: c)
        }
    """)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "MLComputePlan" in line]
    assert len(lines) == 1 and "Planted.swift:8:" in lines[0], result.stderr


def test_available_on_an_enclosing_type_covers_its_members(tmp_path):
    result = check(tmp_path, """
        import CoreML
        @available(iOS 18.0, macOS 15.0, *)
        final class Styles {
            func apply(_ c: MLModelConfiguration, _ name: String) {
                c.functionName = name
            }
        }
    """)
    assert result.returncode == 0, result.stderr


def test_platform_only_api_needs_an_if_that_leaves_the_other_platform_out(tmp_path):
    source = """
        import Foundation
        func bookmark(_ url: URL) throws -> Data {
            try url.bookmarkData(options: [.withSecurityScope], includingResourceValuesForKeys: nil, relativeTo: nil)
        }
    """
    bare = check(tmp_path, source)
    assert bare.returncode == 1
    assert "withSecurityScope is unavailable on iOS" in bare.stderr
    gated = check(tmp_path, source.replace("try url.bookmarkData", "#if os(macOS)\n            try url.bookmarkData")
                  .replace("relativeTo: nil)\n", "relativeTo: nil)\n            #else\n            Data()\n            #endif\n"))
    assert gated.returncode == 0, gated.stderr


def test_comments_and_strings_are_not_uses(tmp_path):
    result = check(tmp_path, """
        import CoreML
        // configuration.functionName is iOS 18
        /* MLComputePlan.load(contentsOf:) is /* nested */ 17.4 */
        func note(_ c: MLModelConfiguration) -> String {
            "see \\(c.computeUnits) and .functionName or MLComputePlan in the docs"
        }
    """)
    assert result.returncode == 0, result.stderr


def test_member_rows_apply_only_where_their_module_is_imported(tmp_path):
    result = check(tmp_path, """
        import Foundation
        struct Request { var functionName: String? }
        func name(_ r: Request) -> String? { r.functionName }
    """)
    assert result.returncode == 0, result.stderr


def test_stand_ins_must_carry_the_tables_availability(tmp_path):
    root = tmp_path / "swift-app"
    shutil.copytree(SWIFT_APP / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(SWIFT_APP / "Package.swift", root / "Package.swift")
    (root / "Sources").mkdir()
    (root / "PocketSDApp").mkdir()
    ok = subprocess.run([sys.executable, str(CHECKER), "--root", str(root)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    table = root / "scripts" / "availability.tsv"
    table.write_text(table.read_text().replace("MLModelConfiguration.functionName\tmember\t18.0\t15.0",
                                               "MLModelConfiguration.functionName\tmember\t17.0\t14.0"))
    drifted = subprocess.run([sys.executable, str(CHECKER), "--root", str(root)], capture_output=True, text=True, timeout=60)
    assert drifted.returncode == 1
    assert "MLModelConfiguration.functionName is declared iOS 18.0, availability.tsv says 17.0" in drifted.stderr


def test_the_package_and_the_app_pass():
    # Before the fix this reported ComputePlanProbe.swift:15 (functionName in an iOS 17.4 function).
    result = subprocess.run([sys.executable, str(CHECKER)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "every newer API is guarded" in result.stdout
