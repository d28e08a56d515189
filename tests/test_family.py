"""Model families are data (`pocketsd.models.family`): every stage asks the descriptor, none tests a family name.

The walk below reads every module's string constants and names with `ast`: a family key ("sdxl"), one of a
family's diffusers pipeline classes or its denoiser's conditioning mark, or an `is_xl` flag anywhere but the
descriptor module fails, so adding a family stays one entry in one file.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from pocketsd.errors import BadInput
from pocketsd.models import family as F

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "pocketsd"
DESCRIPTOR = PACKAGE / "models" / "family.py"

# Files still allowed a family test while it moves to the descriptor (none left: keep it that way).
PENDING: set[str] = set()


def family_literals() -> set[str]:
    out: set[str] = set()
    for fam in F.FAMILIES.values():
        out |= {fam.name, fam.pipeline_class, *fam.pipelines}
        if fam.addition_embed_type:
            out.add(fam.addition_embed_type)
    return out


def family_mentions(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    literals = family_literals()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in literals:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Name) and node.id == "is_xl":
            found.append((node.lineno, "is_xl"))
        elif isinstance(node, ast.Attribute) and node.attr == "is_xl":
            found.append((node.lineno, ".is_xl"))
        elif isinstance(node, ast.FunctionDef) and node.name == "is_xl":
            found.append((node.lineno, "def is_xl"))
    return found


def test_no_family_name_outside_the_descriptor():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path == DESCRIPTOR or rel in PENDING:
            continue
        bad += [f"{rel}:{line}: {what}" for line, what in family_mentions(path.read_text(), str(path))]
    assert not bad, "family knowledge outside models/family.py (ask the descriptor instead):\n" + "\n".join(bad)


def test_pending_files_still_need_the_exception():
    # an entry whose file no longer names a family is stale: drop it, so the allowance shrinks to nothing
    stale = [rel for rel in PENDING if not family_mentions((PACKAGE / rel).read_text())]
    assert not stale, f"no longer pending, remove from PENDING: {stale}"


@pytest.mark.parametrize("source", ['x = "sdxl"\n', "if plan.is_xl:\n    pass\n",
                                    'cls = "StableDiffusionXLPipeline"\n', 'ok = cfg.kind == "text_time"\n'])
def test_the_walker_finds_a_family_test(source):
    assert family_mentions(source)


def test_the_walker_ignores_prose():
    assert not family_mentions('"""SDXL reads the penultimate layer; sdxl models too."""\nmsg = "an sdxl model"\n')


def test_each_family_declares_itself_once():
    names = [f.name for f in F.FAMILIES.values()]
    assert len(set(names)) == len(names)
    # a pipeline class names one family, or several told apart by their denoiser's config (FLUX.1 schnell / dev)
    pipelines = [(p, tuple(sorted(f.denoiser_config_match.items()))) for f in F.FAMILIES.values() for p in f.pipelines]
    assert len(set(pipelines)) == len(pipelines)
    for fam in F.FAMILIES.values():
        assert fam.components[-3:] == (fam.denoiser, "vae", "scheduler")
        if fam.denoiser_signature == "unet":  # a UNet's pooled text goes with time_ids (an MMDiT's goes alone)
            assert sum(t.pooled for t in fam.text_encoders) == (1 if fam.time_ids else 0)
        assert len(fam.time_ids_for(64, 32)) == fam.time_ids


def test_sdxl_and_sd_as_diffusers_describes_them():
    assert F.SDXL.tokenizers == ("tokenizer", "tokenizer_2") and F.SDXL.penultimate_hidden
    assert F.SDXL.time_ids_for(1024, 768) == [1024, 768, 0, 0, 1024, 768]
    assert F.SD.tokenizers == ("tokenizer",) and not F.SD.penultimate_hidden and not F.SD.pooled_embeddings
    assert F.SDXL.vae_normalisation({}) == (0.13025, None)
    # what a LoRA may adapt (lora merge visits them in this order)
    assert F.SDXL.adapted_components == ("unet", "text_encoder", "text_encoder_2")
    assert F.SD.adapted_components == ("unet", "text_encoder")
    assert F.SD.vae_normalisation({"scaling_factor": 0.5, "shift_factor": 0.0}) == (0.5, None)


def test_family_of_folders_configs_and_names(tmp_path):
    from pocketsd.data import REFERENCE_MODEL

    from pocketsd.artifacts.model_folder import family_of_folder

    assert family_of_folder(REFERENCE_MODEL) is F.SDXL
    assert F.family_of(json.loads((REFERENCE_MODEL / "model_index.json").read_text())) is F.SDXL
    assert F.family_of(json.loads((REFERENCE_MODEL / "unet" / "config.json").read_text())) is F.SDXL
    assert F.family_of({"addition_embed_type": None}) is F.SD
    assert F.family_named(None) is F.LEGACY and F.family_named("sd") is F.SD
    with pytest.raises(BadInput, match="unknown model family"):
        F.family_named("nope")
    refiner = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
               "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    with pytest.raises(BadInput, match="not supported"):
        F.family_of(refiner)
    assert F.family_of_package_names(["TextEncoder", "TextEncoder2", "Unet"]) is F.SDXL
    assert F.family_of_package_names(["TextEncoder", "Unet"]) is F.SD


def test_one_size_rule():
    from pocketsd.convert import plan
    from pocketsd.pipeline import options

    assert options.MAX_SIDE is F.MAX_SIDE and plan.MAX_SIDE is F.MAX_SIDE
    assert F.parse_size("64×32") == (64, 32)
    with pytest.raises(BadInput, match="--calib-size 8000x8 is over the 4096 px per side"):
        F.parse_size("8000x8", "--calib-size")
    assert F.size_multiple({"block_out_channels": [1, 2, 3, 4]}, {"down_block_types": ["a", "b", "c"]}) == 32


def test_tokenizer_padding_rule():
    assert F.tokenizer_settings(None) == {"pad_token": "<|endoftext|>", "model_max_length": 77}
    assert F.tokenizer_settings({"pad_token": {"content": "!"}, "model_max_length": 10**30}) == \
        {"pad_token": "!", "model_max_length": 77}
