"""Domain presets: the shipped data file, expansion and defaults, unknown names, `pocketsd domains`, and every preset
running through `generate` on the reference model."""

from __future__ import annotations

import json

import pytest

from pocketsd.errors import BadInput
from pocketsd.pipeline.presets import DOMAINS_FILE, SCHEDULERS, apply_domain, get_preset, load_presets
from pocketsd.data import REFERENCE_LORAS as LORA_DIR

REQUIRED = {"marketing", "poster", "logo", "interior", "fashion", "food", "poster-style", "blueprint"}


def test_shipped_file_has_every_required_domain():
    presets = load_presets()
    assert REQUIRED <= set(presets)
    for p in presets.values():
        assert p.scheduler in SCHEDULERS and p.steps >= 1 and p.guidance >= 0
        assert p.expand("a red circle").startswith("a red circle")  # the subject first: truncation drops style words
    assert presets["poster-style"].lora.path == LORA_DIR / "poster.safetensors"
    assert presets["blueprint"].lora.path == LORA_DIR / "blueprint.safetensors"
    # One data file, plain JSON, shared with the Swift app.
    assert json.loads(DOMAINS_FILE.read_text())["format"] == "pocketsd-domains"


def test_apply_domain_fills_defaults_and_explicit_options_win(tmp_path):
    s = apply_domain("marketing", "a red circle on a white background")
    preset = get_preset("marketing")
    assert s.prompt == "a red circle on a white background"
    assert s.expanded_prompt == preset.expand(s.prompt) != s.prompt
    assert (s.steps, s.guidance, s.scheduler, s.negative_prompt) == (preset.steps, preset.guidance, preset.scheduler,
                                                                      preset.negative_prompt)
    s = apply_domain("marketing", "x", steps=3, guidance=1.5, scheduler="ddim", negative="")
    assert (s.steps, s.guidance, s.scheduler, s.negative_prompt) == (3, 1.5, "ddim", "")
    none = apply_domain(None, "plain", steps=None)
    assert none.expanded_prompt == "plain" and none.domain is None and none.steps is None


def test_braces_in_a_prompt_are_kept():
    assert "{weird}" in apply_domain("logo", "a {weird} mark").expanded_prompt


def test_unknown_domain_lists_the_known_ones():
    with pytest.raises(BadInput) as err:
        apply_domain("steampunk", "a red circle")
    msg = str(err.value)
    assert "steampunk" in msg and all(name in msg for name in REQUIRED) and "\n" not in msg


def _domains_file(tmp_path, **overrides):
    entry = {"name": "mine", "prompt_template": "{prompt}, mine", "negative_prompt": "", "steps": 4, "guidance": 2.0,
             "scheduler": "euler", "lora": None}
    entry.update(overrides)
    path = tmp_path / "domains.json"
    path.write_text(json.dumps({"domains": [entry]}))
    return path


def test_lora_preset_adds_its_lora_unless_given(tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    path = _domains_file(tmp_path, lora={"file": str(lora), "scale": 0.7})
    assert apply_domain("mine", "p", path=path).loras == [(lora, 0.7)]
    assert apply_domain("mine", "p", loras=[(lora, 0.3)], path=path).loras == [(lora, 0.3)]  # the user's scale wins
    lora.unlink()
    with pytest.raises(BadInput, match="missing"):
        apply_domain("mine", "p", path=path)


@pytest.mark.parametrize("override, message", [
    ({"prompt_template": "no placeholder"}, "exactly once"),
    ({"scheduler": "lms"}, "scheduler"),
    ({"steps": 0}, "steps"),
    ({"steps": "many"}, "malformed"),
])
def test_malformed_presets_are_bad_input(tmp_path, override, message):
    with pytest.raises(BadInput, match=message):
        load_presets(_domains_file(tmp_path, **override))


def test_bad_domains_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        load_presets(tmp_path / "bad.json")


def test_cli_lists_domains(capsys):
    from pocketsd.cli import main

    assert main(["domains"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("marketing", "interior", "blueprint"))
    assert main(["domains", "--json"]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} >= REQUIRED


def test_cli_unknown_domain_exits_2(capsys, tmp_path):
    from pocketsd.cli import main

    code = main(["generate", "a red circle on a white background", "--domain", "nope", "--out", str(tmp_path / "x.png"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "known domains" in err and "marketing" in err
    assert not (tmp_path / "x.png").exists()


LORA_PRESETS = ("poster-style", "blueprint", "copy-space")


@pytest.mark.parametrize("name", ["marketing", *LORA_PRESETS])
def test_preset_through_generate_run(name, tmp_path, ref_model_path):
    """`generate --domain NAME` end to end (torch backend): the report keeps prompt and expanded prompt; the LoRA
    presets apply their shipped LoRA file."""
    from pocketsd.pipeline.options import GenerateOptions as RunOptions
    from pocketsd.pipeline.run import run

    preset = get_preset(name)
    if preset.lora is not None and not preset.lora.path.is_file():
        pytest.fail(f"the shipped LoRA {preset.lora.path} is missing")
    (report,) = run(RunOptions(prompt="a red circle on a white background", domain=name, steps=2, seed=0,
                               out=tmp_path / f"{name}.png"), warn=lambda m: None, progress=False)
    assert report["domain"] == name
    assert report["prompt"] == "a red circle on a white background"
    assert report["expanded_prompt"] == preset.expand(report["prompt"])
    assert report["guidance"] == preset.guidance and report["scheduler"] == preset.scheduler
    assert (tmp_path / f"{name}.png").is_file()
    if preset.lora is not None:
        assert len(report["loras"]) == 1 and preset.lora.file in json.dumps(report["loras"])


def test_every_other_preset_generates(ref_model_path):
    """The remaining presets' expanded prompts, negatives and schedulers through the shared loop (one loaded model)."""
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.torch_backend import open_backend

    backend = open_backend(str(ref_model_path))
    for name in sorted(REQUIRED - {"marketing", *LORA_PRESETS}):
        s = apply_domain(name, "a blue square on a gray background")
        result = generate(backend, GenerationRequest(prompt=s.expanded_prompt, negative_prompt=s.negative_prompt,
                                                     steps=1, guidance=s.guidance, scheduler=s.scheduler))
        assert result.images[0].size == (128, 128), name
