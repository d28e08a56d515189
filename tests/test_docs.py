"""The documentation's results pages are generated from `benchmarks/results/*.json` (`docs/render.py`); a page that
differs from what its file gives, or a README headline table typed by hand, fails here."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def render():
    spec = importlib.util.spec_from_file_location("pocketsd_docs_render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(render):
    return render.render()


def test_results_pages_regenerate_without_a_difference(render, rendered, tmp_path):
    pages, figures = rendered
    render.write(tmp_path, pages, figures)
    committed = sorted(p.name for p in (ROOT / "docs" / "results").glob("*.md"))
    assert committed == sorted(pages), "pages made by no results file, or results files without a page"
    for name in pages:
        fresh, kept = (tmp_path / name).read_text(), (ROOT / "docs" / "results" / name).read_text()
        assert fresh == kept, f"docs/results/{name} differs from its results file: run `python docs/render.py`"


def test_every_results_file_has_a_page_with_its_provenance(rendered):
    pages, _ = rendered
    results = sorted((ROOT / "benchmarks" / "results").rglob("*.json"))
    assert results
    for f in results:
        rel = f.relative_to(ROOT / "benchmarks" / "results").as_posix()
        page = next((t for t in pages.values() if f"`benchmarks/results/{rel}`" in t), None)
        assert page is not None, rel
        for field in ("| command |", "| code version |", "| reference model |", "| machine |", "| load |", "| date |",
                      "| run |"):
            assert field in page, (rel, field)


def test_readme_headline_is_the_rendered_one(render, rendered):
    pages, _ = rendered
    readme = (ROOT / "README.md").read_text()
    assert render.HEADLINE_START in readme and render.HEADLINE_END in readme
    assert render.readme_with_headline(readme, pages) == readme, "README's headline table: run `python docs/render.py`"


def test_the_check_catches_a_planted_drift(render, rendered, tmp_path):
    """A figure typed into a page (here: one PSNR changed) must be reported."""
    pages, figures = rendered
    render.write(tmp_path, pages, figures)
    page = tmp_path / "compression.md"
    text = page.read_text()
    number = re.search(r"\| (\d+\.\d\d) \[", text).group(1)
    page.write_text(text.replace(number, f"{float(number) + 1:.2f}", 1))
    assert render.diff(tmp_path, pages) == ["compression.md: differs from what its file gives"]


def test_headline_rows_come_from_the_files(render, rendered):
    """Every PSNR in the headline table is one of the results files' own values, rounded."""
    pages, _ = rendered
    results = ROOT / "benchmarks" / "results"
    values = set()
    for name in ("compression.json", "distill_curve.json"):
        data = json.loads((results / name).read_text())
        for row in data.get("rows", []) + data.get("points", []):
            if row.get("image_psnr_db") is not None:
                values.add(f"{row['image_psnr_db']:.2f}")
    default = results / "default_compress.json"  # the default command's own rows (held-out and in-set)
    if default.is_file():
        for row in json.loads(default.read_text()).get("rows", []):
            for split in (row.get("eval") or {}).values():
                values.add(f"{split['psnr_db']:.2f}")
    shown = re.findall(r"\| (\d+\.\d\d) \[", pages["headline.md"])
    assert shown and set(shown) <= values


def test_units_page_states_decimal_and_binary_units():
    units = (ROOT / "docs" / "units.md").read_text()
    assert "10^9" in units.replace("10⁹", "10^9") and "2^30" in units.replace("2³⁰", "2^30")


def test_readme_is_a_five_minute_read():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    assert "make demo" in lines[3] and "make test" in lines[4]  # the two commands come first


def _default_compress_doc(special_run: bool) -> dict:
    def ev(psnr):
        return {"psnr_db": psnr, "psnr_low": psnr - 1, "psnr_high": psnr + 1, "n": 18, "adherence": 0.9,
                "adherence_against": 0.88}
    rows = [{"variant": name, "command": f"pocketsd compress --out OUT {flags}".strip(),
             "default_command": not flags and not special_run, "compress": {"wall_s": 1.0, "load_before": [2.0]},
             "components": {"unet": {"bits_per_param": 4.5}},
             "eval": {"reference-held-out": ev(30.0 + i), "reference-in-set": ev(31.0 + i)}}
            for i, (name, flags) in enumerate((("default", ""), ("off", "--distill off")))]
    return {"command": "python benchmarks/default_compress.py", "special_run": special_run, "date": "2026-01-01",
            "code_version": "abc1234", "machine": {"cores": 2}, "rows": rows,
            "protocol": {"splits": {"reference-held-out": "never drawn from by calibration"}}}


@pytest.mark.parametrize("special_run", [False, True])
def test_a_default_command_file_leads_the_headline_only_when_it_is_one(render, tmp_path, monkeypatch, special_run):
    """The default command's own results file (benchmarks/default_compress.py) heads the headline table, labelled
    DEFAULT, and a smoke run of it never does."""
    for name in ("compression.json", "distill_curve.json"):
        (tmp_path / name).write_text((ROOT / "benchmarks" / "results" / name).read_text())
    (tmp_path / "default_compress.json").write_text(json.dumps(_default_compress_doc(special_run)))
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    pages, _ = render.render(tmp_path)
    headline, page = pages["headline.md"], pages["default_compress.md"]
    assert "| date | 2026-01-01 |" in page and "git abc1234" in page
    assert "never drawn from by calibration" in page  # the held-out split, stated where the file states it
    if special_run:
        assert "| DEFAULT |" not in page and "The default command" not in headline
        assert "No file holds a measurement of the default command" in headline
    else:
        assert "| `pocketsd compress --out OUT` | DEFAULT | 4.5 | 30.00 [29.00, 31.00] |" in headline
        assert "special run: --distill off" in headline and "No file holds" not in headline


def test_every_page_says_which_reference_model_made_it(render, rendered):
    """Results made on version 1 stay traceable after version 2 lands: every file records its reference model (or
    that the run used none) and its page shows it."""
    pages, _ = rendered
    for f in sorted((ROOT / "benchmarks" / "results").rglob("*.json")):
        data = json.loads(f.read_text())
        assert "reference_model" in data, f"{f.name}: no reference_model record"
        rel = f.relative_to(ROOT / "benchmarks" / "results").as_posix()
        page = next(t for t in pages.values() if f"`benchmarks/results/{rel}`" in t)
        row = next(line for line in page.splitlines() if line.startswith("| reference model |"))
        ref = data["reference_model"]
        assert (f"version {ref['version']}" in row) if ref else ("did not use the reference model" in row), (rel, row)


def test_a_version_2_file_shows_its_card_facts(render):
    data = {"reference_model": {"version": 2, "folder": "/x", "card": "model_card.json", "base": {"version": 1},
                                "grammar": {"p_position": 0.8, "p_pair": 0.2, "images": 12000},
                                "unet_steps": {"this_run": 2600, "planned": 2600}}}
    text = render.reference_model_text(data)
    assert text.startswith("version 2") and "p_pair 0.2" in text and "2,600 UNet steps on version 1" in text
    assert render.reference_model_text({}) == render.NOT_RECORDED
