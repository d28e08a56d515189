"""The on-disk contract's one home (pocketsd.artifacts): manifests are versioned and checked; artifacts written
before the contract moved (format 1, tests/fixtures/) still load; a newer, foreign or broken manifest is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pocketsd.artifacts import MANIFEST, read_manifest
from pocketsd.artifacts.bundle import memory_plan, read_bundle_manifest, stage_of
from pocketsd.artifacts.compressed import read_compressed_model
from pocketsd.cli import main
from pocketsd.errors import BadInput

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def compressed_v1(tmp_path, ref_model_path) -> Path:
    """The format-1 compressed folder with the reference model's text encoders and VAE put back in."""
    folder = tmp_path / "compressed_v1"
    shutil.copytree(FIXTURES / "compressed_v1", folder)
    for part in ("text_encoder", "text_encoder_2", "vae"):
        shutil.copytree(ref_model_path / part, folder / part)
    return folder


def test_format1_compressed_folder_loads_and_generates(compressed_v1, tmp_path):
    model = read_compressed_model(compressed_v1)
    assert model.manifest["migrated_from"] == 1 and model.manifest["format_version"] == 2
    unet = model.components["unet"]
    assert len(unet.layers) > 10 and unet.accounting["bits_per_param"] > 0
    state = model.state_dict("unet")  # no digests were recorded in format 1: nothing to verify, still readable
    assert all(f"{layer.name}.codes" in state for layer in unet.layers)
    out = tmp_path / "img.png"
    assert main(["generate", "a red circle on a white background", "--model", str(compressed_v1), "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert out.is_file()


def test_format1_bundle_reads_with_its_stages_and_memory_plan(tmp_path, capsys):
    from bundle_fixture import bundle_v1

    folder = bundle_v1(tmp_path / "bundle_v1")
    bundle = read_bundle_manifest(folder)
    assert bundle.manifest["migrated_from"] == 1
    assert bundle.unet_packages() == ["Unet"] and bundle.components["Unet"]["stage"] == "denoise"
    plan = bundle.manifest["memory_plan"]
    assert plan["stages"] == [{"stage": "denoise", "packages": ["Unet"]}] and plan["weight_bytes"]["Unet"] > 0
    assert main(["info", str(folder), "--memory"]) == 0
    assert "memory plan" in capsys.readouterr().out


@pytest.mark.parametrize("kind,version,needle", [
    ("compressed", 99, "newer than this pocketsd reads"),
    ("compressed", 0, "old format"),
    ("coreml", 2, "lists no components"),
    ("banana", 1, "unknown kind"),
])
def test_unreadable_manifest_versions_and_kinds_are_one_line(tmp_path, kind, version, needle, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"kind": kind, "format_version": version}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_a_manifest_of_another_kind_is_named_for_what_it_is(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"kind": "coreml", "format_version": 2, "components": {}}))
    with pytest.raises(BadInput, match="is a Core ML bundle, not a compressed model folder"):
        read_compressed_model(tmp_path)


def test_broken_manifest_json_is_bad_input(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BadInput, match="not a readable PocketSD manifest"):
        read_manifest(tmp_path, "compressed")


def test_memory_plan_low_memory_keeps_one_text_encoder_resident():
    comps = {"TextEncoder": {"weight_bytes": 250}, "TextEncoder2": {"weight_bytes": 1400},
             "UnetChunk1": {"weight_bytes": 700}, "UnetChunk2": {"weight_bytes": 800},
             "VAEDecoder": {"weight_bytes": 100}, "VAEEncoder": {"weight_bytes": 70}}
    plan = memory_plan(comps)
    assert [s["stage"] for s in plan["stages"]] == ["text_encode", "vae_encode", "denoise", "vae_decode"]
    low, default = plan["resident_bytes"]["low_memory"], plan["resident_bytes"]["default"]
    assert low["text_encode"] == 1400 and low["denoise"] == 1500 and low["vae_decode"] == 100
    assert default["text_encode"] == 1650 and default["vae_decode"] == 250 + 1400 + 1500 + 100 + 70
    assert plan["largest_stage_bytes"] == {"default": 3320, "low_memory": 1500}
    assert stage_of("controlnet/Edges") == "denoise"


def test_compressed_files_are_hashed_and_a_flipped_byte_is_caught(tmp_path, ref_model_path):
    from convert_support import compress_quickly, tiny_unet_pipeline

    folder = compress_quickly(tiny_unet_pipeline(ref_model_path, tmp_path / "tiny"), tmp_path / "c", min_numel=2048)
    model = read_compressed_model(folder)
    weights = model.components["unet"].weights
    assert weights in model.files and "text_encoder/model.safetensors" in model.files
    model.verify()
    data = bytearray((folder / weights).read_bytes())
    data[-10] ^= 0xFF
    (folder / weights).write_bytes(bytes(data))
    with pytest.raises(BadInput, match="does not match the sha256"):
        model.state_dict("unet")
    assert isinstance(model.state_dict("unet", verify=False)[f"{model.components['unet'].layers[0].name}.codes"],
                      torch.Tensor)
