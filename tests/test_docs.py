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
        for field in ("| command |", "| code version |", "| machine |", "| load |", "| date |", "| run |"):
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
    shown = re.findall(r"\| (\d+\.\d\d) \[", pages["headline.md"])
    assert shown and set(shown) <= values


def test_units_page_states_decimal_and_binary_units():
    units = (ROOT / "docs" / "units.md").read_text()
    assert "10^9" in units.replace("10⁹", "10^9") and "2^30" in units.replace("2³⁰", "2^30")


def test_readme_is_a_five_minute_read():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    assert "make demo" in lines[3] and "make test" in lines[4]  # the two commands come first
