"""The cheap parts of the real-size benchmark (benchmarks/sdxl_real_size.py, which takes hours and is never run
here): the compress command it runs, the child's own peak-RSS reading, and how issue 20's targets are marked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import child_peak  # noqa: E402
import sdxl_real_size  # noqa: E402


def test_compress_is_the_default_command_with_only_an_optional_calib_size():
    from pocketsd.cli import build_parser

    parser = build_parser()
    plain = sdxl_real_size.compress_argv(Path("M"), Path("O"))
    assert plain == ["compress", "--model", "M", "--out", "O"]
    sized = sdxl_real_size.compress_argv(Path("M"), Path("O"), "512x512")
    assert sized == plain + ["--calib-size", "512x512"]
    # every option the command has is at the compress parser's own default, but --model/--out/--calib-size
    sub = next(a for a in parser._actions if a.dest == "command").choices["compress"]
    args = vars(parser.parse_args(sized))
    changed = {a.dest for a in sub._actions if a.dest in args and args[a.dest] != a.default}
    assert changed == {"model", "out", "calib_size"}


def test_status_bytes_reads_kb_fields():
    text = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  1234 kB\nVmRSS:\t  1000 kB\n"
    assert child_peak.status_bytes(text, "VmHWM") == 1234 * 1024
    assert child_peak.status_bytes(text, "VmRSS") == 1000 * 1024
    assert child_peak.status_bytes("Name:\tzombie\nState:\tZ (zombie)\n", "VmHWM") is None
    with pytest.raises(ValueError):
        child_peak.status_bytes("VmHWM:\t 3 MB\n", "VmHWM")


def test_the_childs_own_peak_is_read_at_its_exit(tmp_path, monkeypatch):
    """A child that touches 160 MiB, frees it and exits with code 3 at once: its own VmHWM still shows the
    160 MiB (a 0.5 s poll would likely miss it), and the exit code comes through."""
    (tmp_path / "spike.py").write_text(
        "import sys\nblock = b'\\x01' * (160 << 20)\ndel block\nsys.exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    row = child_peak.run_measured([], tmp_path / "spike.log", module="spike")
    assert row["exit_code"] == 3
    assert row["peak_rss_bytes"] >= 160 << 20
    assert row["peak_rss_bytes"] >= row["polled_hwm_bytes"]


def _stages(compress_min, compress_gb, convert_exit):
    return {"compress": {"exit_code": 0, "wall_s": compress_min * 60, "peak_rss_gb": compress_gb},
            "convert": {"exit_code": convert_exit, "wall_s": 600, "peak_rss_gb": 3.0}}


def test_targets_are_marked_met_missed_or_not_measured():
    bundle = {"total_bytes": 1_850_000_000, "memory_plan": {"largest_stage_bytes": {"low_memory": 1_600_000_000}}}
    marked = {t["target"]: t for t in sdxl_real_size.mark_targets(_stages(61, 7.5, 1), bundle)}
    assert [t[0] for t in sdxl_real_size.TARGETS] == list(marked)
    assert marked["default compress: wall"]["verdict"] == "missed"
    assert marked["default compress: wall"]["value"] == 61
    assert marked["default compress: peak RSS"]["verdict"] == "met"
    assert marked["convert: wall"]["verdict"] == "not measured (exit 1)"
    assert marked["convert: peak RSS"]["met"] is None
    assert marked["whole bundle"]["verdict"] == "met"
    assert marked["largest low-memory stage (resident weights)"]["verdict"] == "missed"

    nothing = {t["target"]: t["verdict"] for t in sdxl_real_size.mark_targets({}, {})}
    assert set(nothing.values()) == {"not measured (did not run)"}



def test_the_results_page_says_default_only_for_the_default_command():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pocketsd_docs_render_real_size",
                                                  Path(__file__).resolve().parents[1] / "docs" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)

    def page(argv):
        stages = {"compress": {"argv": argv, "exit_code": 0, "wall_s": 4000.0, "cpu_s": 7000.0, "peak_rss_gb": 7.0}}
        data = {"stages": stages, "targets": sdxl_real_size.mark_targets(stages, {})}
        return render.page_sdxl_real_size(data, {})

    kind, body = page(sdxl_real_size.compress_argv(Path("M"), Path("O"), "512x512"))
    assert kind == "DEFAULT (calibrated at 512x512)"
    text = "\n".join(body)
    assert "| default compress: wall | 60 min | 66.67 | missed |" in text
    assert "not measured (did not run)" in text
    kind, _ = page(sdxl_real_size.compress_argv(Path("M"), Path("O")) + ["--recipe", "w4r32"])
    assert kind == "special run: --recipe w4r32"
