"""Issue 10: SIGKILL `compress`, `convert` and `lora merge` at deterministic points (≥ 20 in all). After each kill
nothing half-written is visible at `--out` — it is still the complete artifact of an earlier run (every file matching
its manifest's sha256) — and the next run succeeds and removes what the killed run left beside it.

The kill points are `pocketsd.artifacts.atomic.kill_point` calls in the stages' progress callbacks and writers:
one listing run (POCKETSD_KILL_LOG) names them all, then each chosen point gets a run with POCKETSD_KILL_AT=N.
Runs fork from a server that imported torch, diffusers and coremltools once, so a kill costs its work, not an
interpreter start. Models are tiny (tests/convert_support.py) and the recipe fixed, to keep the suite short.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import signal
from pathlib import Path

import pytest

from hostile_support import build_workspace, cli_child

PRELOAD = ["pocketsd.cli", "pocketsd.ui", "pocketsd.compress.run", "pocketsd.compress.lora_merge", "pocketsd.convert.run",
           "pocketsd.convert.unet_job", "hostile_support", "torch", "diffusers", "transformers", "coremltools"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, ref_model_path):
    return build_workspace(tmp_path_factory.mktemp("kill-ws"), ref_model_path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    logs = tmp_path_factory.mktemp("kill-logs")
    counter = iter(range(10**6))

    def run_cli(argv: list[str], cwd: Path, *, kill_at: int | None = None, list_points: Path | None = None) -> int:
        env = {"POCKETSD_KILL_AT": str(kill_at) if kill_at else "", "POCKETSD_KILL_LOG": str(list_points or "")}
        log = logs / f"run-{next(counter)}.log"
        proc = ctx.Process(target=cli_child, args=(argv, str(cwd), env, str(log)))
        proc.start()
        proc.join(600)
        if proc.exitcode is None:
            proc.kill()
            pytest.fail(f"{argv} did not finish in 600 s")
        if kill_at is None and proc.exitcode != 0:
            pytest.fail(f"{argv} exited {proc.exitcode}:\n{log.read_text()[-3000:]}")
        return proc.exitcode

    return run_cli


def _points(path: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines()]


def _spread(names: list[str], every_kind_of: tuple[str, ...], extra: int) -> list[int]:
    """1-based kill points: the first and last of each repeated kind (progress ticks), every single one, plus
    `extra` spread over the long runs."""
    chosen: set[int] = set()
    for kind in set(names):
        idx = [i + 1 for i, n in enumerate(names) if n == kind]
        chosen.update({idx[0], idx[-1]})
        if kind.startswith(every_kind_of) and len(idx) > 2:
            step = max(1, len(idx) // (extra + 1))
            chosen.update(idx[step::step][:extra])
    return sorted(chosen)


def _leftovers(out: Path) -> list[Path]:
    """Temps of killed runs beside `--out` (and inside a bundle's Resources)."""
    found = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and (".tmp-" in p.name or ".old-" in p.name)]
    resources = out / "Resources"
    if resources.is_dir():
        found += [p for p in resources.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    return found


def _complete_compressed(out: Path) -> None:
    from pocketsd.artifacts.compressed import read_compressed_model

    model = read_compressed_model(out)
    model.verify()  # every file the manifest lists matches its sha256
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "pocketsd.json"}
    assert on_disk == set(model.files), on_disk ^ set(model.files)


def _consistent_bundle(out: Path, needed: list[str]) -> None:
    from pocketsd.artifacts.bundle import read_bundle_manifest

    bundle = read_bundle_manifest(out)
    bundle.verify()  # what the manifest lists is whole and matches
    for name in needed:
        assert name in bundle.components, (name, list(bundle.components))


def _kill_series(run, argv, cwd, out: Path, points_file: Path, check, kinds: tuple[str, ...], extra: int):
    run(argv, cwd, list_points=points_file)  # lists the points and leaves a complete artifact to be replaced
    check(out)
    names = _points(points_file)
    killed = []
    for k in _spread(names, kinds, extra):
        code = run(argv, cwd, kill_at=k)
        assert code == -signal.SIGKILL, (k, names[k - 1], code)
        check(out)  # still whole: the previous artifact, or the new one if the kill came after the rename
        assert len({p.name.split("-")[1] for p in _leftovers(out) if "-" in p.name}) <= 1  # earlier temps were cleaned
        killed.append(names[k - 1])
    run(argv, cwd)
    check(out)
    assert _leftovers(out) == []
    return killed


def test_kill_compress(ws, run, tmp_path):
    out = tmp_path / "c"
    argv = ["compress", "--model", str(ws.tiny), "--out", str(out), "--recipe", "w4r0", "--quantizer", "int4",
            "--no-smoothing", "--refine-iters", "0", "--calib-count", "2", "--calib-steps", "1", "--components", "unet",
            "--quiet"]
    killed = _kill_series(run, argv, tmp_path, out, tmp_path / "points.txt", _complete_compressed,
                          ("progress:compressing",), extra=4)
    assert len(killed) >= 10, killed  # with merge's 4 and convert's ≥ 6: ≥ 20 kill points in all
    assert {"compressed:copied", "compressed:unet", "atomic_dir:c:complete", "atomic_dir:c:renamed"} <= set(killed)


def test_kill_lora_merge(ws, run, tmp_path):
    out = tmp_path / "merged"
    argv = ["lora", "merge", "--model", str(ws.comp), "--lora", str(ws["tiny_lora"]), "--out", str(out)]
    killed = _kill_series(run, argv, tmp_path, out, tmp_path / "points.txt", _complete_compressed, (), extra=0)
    assert set(killed) == {"compressed:copied", "compressed:unet", "atomic_dir:merged:complete",
                           "atomic_dir:merged:renamed"}


def test_kill_convert(ws, run, tmp_path):
    out = tmp_path / "bundle"
    argv = ["convert", "--model", str(ws.tiny), "--out", str(out), "--only", "TextEncoder", "--force", "--quiet"]
    killed = _kill_series(run, argv, tmp_path, out, tmp_path / "points.txt", lambda o: _consistent_bundle(o, []), (),
                          extra=0)
    assert "atomic_dir:TextEncoder.mlpackage:complete" in killed and "bundle:manifest" in killed
    assert len(killed) >= 6, killed
    # resuming without --force: the package the kills left unlisted or mismatched is converted, the rest skipped
    shutil.rmtree(out / "Resources" / "TextEncoder.mlpackage")
    run(argv[:-2] + ["--quiet"], tmp_path)
    _consistent_bundle(out, ["TextEncoder"])
    manifest = json.loads((out / "pocketsd.json").read_text())
    assert set(manifest["components"]) == {"TextEncoder"}

