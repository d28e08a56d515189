"""ControlNet in Core ML: the graphs that get converted equal diffusers (ControlNet residuals, and the UNet taking
them, whole or in chunks), and `pocketsd convert --controlnet` writes Resources/controlnet/<Name>.mlpackage whose
outputs are the UNet's extra inputs, compressed with our codes read back bit for bit. (Running the packages needs
macOS; the Core ML backend's use of them is tested through the fake predictor in test_coreml_backend.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from convert_support import tiny_unet_pipeline
from pocketsd.convert.bundle import ConvertOptions
from pocketsd.convert.run import convert_bundle
from pocketsd.errors import BadInput


def random_controlnet(unet, seed=0, scale=0.1):
    """A ControlNet shaped for `unet` whose zero convolutions are not zero (so its residuals are not all 0)."""
    from diffusers import ControlNetModel

    widths = tuple(unet.config.block_out_channels)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, widths[0])).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # (the conditioning embedding's last conv starts at zero too, as diffusers initialises it)
        for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters(),
                  *cn.controlnet_cond_embedding.conv_out.parameters()]:
            p.normal_(0, scale, generator=g)
    return cn


def _inputs(unet, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    x = torch.randn(batch, unet.config.in_channels, side, side, generator=g)
    t = torch.tensor([500.0] * batch)
    ehs = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    te = torch.randn(batch, pooled, generator=g)
    ti = torch.tensor([[128.0, 128, 0, 0, 128, 128]] * batch)
    cond = torch.rand(batch, 3, side * 8, side * 8, generator=g)
    return x, t, ehs, te, ti, cond


@pytest.fixture(scope="module")
def ref_unet(ref_model_path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(ref_model_path / "unet").eval()


@pytest.mark.parametrize("attention", ["split-einsum", "original"])
def test_controlnet_graph_matches_diffusers(ref_unet, attention):
    from pocketsd.convert.controlnet_graph import ControlNetSteps
    from pocketsd.convert.export import residual_specs

    cn = random_controlnet(ref_unet)
    x, t, ehs, te, ti, cond = _inputs(ref_unet)
    with torch.no_grad():
        down, mid = cn(x, t, encoder_hidden_states=ehs, controlnet_cond=cond, return_dict=False,
                       added_cond_kwargs={"text_embeds": te, "time_ids": ti})
        ours = ControlNetSteps(cn, attention)(x, t, ehs.transpose(1, 2)[:, :, None, :], cond, te, ti)
    ref = [*down, mid]
    assert len(ours) == len(ref)
    assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) < 1e-4
    specs = residual_specs(SimpleNamespace(**ref_unet.config), (ref_unet.config.sample_size,) * 2, 2)
    assert [tuple(s.shape) for s in specs] == [tuple(r.shape) for r in ref]


def test_unet_takes_residuals_whole_and_in_chunks(ref_unet):
    from pocketsd.convert.unet_graph import ControlledUnet, UnetChunk1, UnetChunk2, UnetSteps

    cn = random_controlnet(ref_unet)
    x, t, ehs, te, ti, cond = _inputs(ref_unet)
    ehs_apple = ehs.transpose(1, 2)[:, :, None, :]
    with torch.no_grad():
        down, mid = cn(x, t, encoder_hidden_states=ehs, controlnet_cond=cond, return_dict=False,
                       added_cond_kwargs={"text_embeds": te, "time_ids": ti})
        ref = ref_unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs={"text_embeds": te, "time_ids": ti},
                       down_block_additional_residuals=list(down), mid_block_additional_residual=mid,
                       return_dict=False)[0]
        plain = ref_unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs={"text_embeds": te, "time_ids": ti},
                         return_dict=False)[0]
        assert (ref - plain).abs().max() > 1e-2  # the residuals matter
        steps = UnetSteps(ref_unet, "split-einsum")
        by_name = dict(zip(steps.residual_names(), [*down, mid]))
        assert (ControlledUnet(steps)(x, t, ehs_apple, te, ti, *down, mid) - ref).abs().max() < 1e-4
        # Cut inside the down blocks (residuals on both sides) and at the balanced cut.
        for cut in (5, steps.balanced_cut()):
            c1, c2 = UnetChunk1(steps, cut, True), UnetChunk2(steps, cut, True)
            assert sorted(c1.residual_names + c2.residual_names) == sorted(by_name)
            mids = c1(x, t, ehs_apple, te, ti, *(by_name[n] for n in c1.residual_names))
            out = c2(ehs_apple, *mids, *(by_name[n] for n in c2.residual_names))
            assert (out - ref).abs().max() < 1e-4, cut


# ---- the bundle --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(convert_model_path, tmp_path_factory) -> Path:
    return tiny_unet_pipeline(convert_model_path, tmp_path_factory.mktemp("cvcn") / "tiny")


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_model, tmp_path_factory) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    folder = tmp_path_factory.mktemp("cvcn") / "sketch-cn"
    random_controlnet(unet).save_pretrained(folder, safe_serialization=True)
    return folder


def _manifest(out: Path) -> dict:
    return json.loads((out / "pocketsd.json").read_text())


@pytest.mark.parametrize("recipe", [None, "w4r16"])
def test_convert_writes_controlnet_package_feeding_the_unet(tiny_model, tiny_controlnet, tmp_path, recipe):
    from pocketsd.artifacts.bundle import read_bundle_manifest
    from pocketsd.convert.mil_weights import decompressed_weights, load_program

    out = tmp_path / "bundle"
    convert_bundle(ConvertOptions(model=str(tiny_model), out=out, only=["Unet", "controlnet/Sketch"],
                                  controlnets=[("Sketch", tiny_controlnet)], controlnet_recipe=recipe),
                   log=lambda m: None)
    package = out / "Resources" / "controlnet" / "Sketch.mlpackage"
    assert package.is_dir()
    bundle = read_bundle_manifest(out)
    assert bundle.controlnets() == ["Sketch"]
    cn_in, cn_out = bundle.specs("controlnet/Sketch")
    unet_in, _ = bundle.specs("Unet")
    assert list(cn_in)[:4] == ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
    assert {"text_embeds", "time_ids"} <= set(cn_in)
    assert cn_in["controlnet_cond"].shape == (2, 3, 128, 128)
    # The ControlNet's outputs are the UNet's extra inputs: same names, same shapes.
    assert list(cn_out)[-1] == "mid_block_res_sample" and len(cn_out) > 2
    for name, spec in cn_out.items():
        assert unet_in[name].shape == spec.shape, name
    # The memory plan loads it with the UNet.
    denoise = next(s for s in bundle.manifest["memory_plan"]["stages"] if s["stage"] == "denoise")
    assert "controlnet/Sketch" in denoise["packages"]
    entry = bundle.components["controlnet/Sketch"]
    assert entry["file"] == "Resources/controlnet/Sketch.mlpackage" and entry["stage"] == "denoise"
    bundle.verify()  # sha256 recorded for the package
    acc = entry["controlnet"]["accounting"]
    program = load_program(package)
    if recipe is None:
        assert "verify" not in entry and acc["bits_per_param"] == 16.0
        assert decompressed_weights(program) == {}
    else:
        # Our codes as constexpr ops, every one matched bit for bit to a compressed layer of the ControlNet.
        assert entry["verify"]["bit_exact"] and entry["verify"]["layers_matched"] == acc["compressed_layers"] > 0
        assert len(decompressed_weights(program)) == entry["verify"]["constexpr_ops"]
        assert acc["bits_per_param"] < 16 and entry["controlnet"]["recipe"]["name"] == "w4r16"


def test_chunked_unet_splits_the_residual_inputs(tiny_model, tiny_controlnet, tmp_path):
    from pocketsd.artifacts.bundle import is_residual, read_bundle_manifest

    out = tmp_path / "bundle"
    convert_bundle(ConvertOptions(model=str(tiny_model), out=out, only=["UnetChunk1", "UnetChunk2", "controlnet/sketch_cn"], chunk_unet=True,
                                  controlnets=[(None, tiny_controlnet)]), log=lambda m: None)
    bundle = read_bundle_manifest(out)
    (name,) = bundle.controlnets()
    assert name == "sketch_cn"  # from the folder's name
    chunk_inputs = [n for c in ("UnetChunk1", "UnetChunk2") for n in bundle.specs(c)[0] if is_residual(n)]
    assert sorted(chunk_inputs) == sorted(bundle.specs(f"controlnet/{name}")[1])  # each residual fed exactly once


def test_rerun_without_controlnet_drops_it(tiny_model, tiny_controlnet, tmp_path):
    out = tmp_path / "bundle"
    opts = dict(model=str(tiny_model), out=out)
    with_cn = dict(controlnets=[("Sketch", tiny_controlnet)], only=["Unet", "controlnet/Sketch"])
    convert_bundle(ConvertOptions(**opts, **with_cn), log=lambda m: None)
    logs = []
    convert_bundle(ConvertOptions(**opts, **with_cn), log=logs.append)
    assert any("controlnet/Sketch: already converted" in m for m in logs)
    assert any("Unet: already converted" in m for m in logs)
    # Without it the UNet is converted again, without residual inputs, and the ControlNet package is dropped.
    convert_bundle(ConvertOptions(**opts, only=["Unet"]), log=lambda m: None)
    m = _manifest(out)
    assert not any(k.startswith("controlnet/") for k in m["components"])
    assert not (out / "Resources" / "controlnet" / "Sketch.mlpackage").exists()
    assert not any(n.startswith("additional_residual") for n in (i["name"] for i in m["components"]["Unet"]["inputs"]))


def _other_controlnet(tiny_controlnet, tmp_path, **changes) -> Path:
    import shutil

    other = tmp_path / "other-cn"
    shutil.copytree(tiny_controlnet, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(changes)
    (other / "config.json").write_text(json.dumps(cfg))
    return other


def test_controlnet_that_does_not_fit_the_unet_is_one_line(tiny_model, tiny_controlnet, tmp_path, capsys):
    from pocketsd.cli import main

    other = _other_controlnet(tiny_controlnet, tmp_path, block_out_channels=[64, 128])
    out = tmp_path / "bundle"
    rc = main(["convert", "--model", str(tiny_model), "--out", str(out), "--controlnet", f"Big={other}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "block_out_channels" in err and "does not fit this UNet" in err
    assert not out.exists()  # refused before anything was written
    with pytest.raises(BadInput, match="none was given"):
        convert_bundle(ConvertOptions(model=str(tiny_model), out=out, controlnet_recipe="w4r16"), log=lambda m: None)
    with pytest.raises(BadInput, match="unknown recipe"):
        convert_bundle(ConvertOptions(model=str(tiny_model), out=out, controlnets=[(None, tiny_controlnet)],
                                      controlnet_recipe="w3r7"), log=lambda m: None)
    with pytest.raises(BadInput, match="two ControlNets are named"):
        convert_bundle(ConvertOptions(model=str(tiny_model), out=out,
                                      controlnets=[("A", tiny_controlnet), ("A", tiny_controlnet)]), log=lambda m: None)
