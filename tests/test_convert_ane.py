"""PyTorch-side checks of what `pocketsd convert` exports (no Core ML conversion here, seconds in total):
the ANE rewrite and the step-wise UNet against diffusers' UNet on the same weights, the compressed export
layers against the compressed model's dequantized weights, chunking, and LoRA concatenation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convert_support import compress_quickly, compressed_unet_layers


@pytest.fixture(scope="session")
def quick_compressed(convert_model_path, tmp_path_factory) -> Path:
    return compress_quickly(convert_model_path, tmp_path_factory.mktemp("convert") / "compressed")


def _inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    size = cfg.sample_size
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    return (torch.randn(batch, cfg.in_channels, size, size, generator=g), torch.tensor([999.0, 301.0])[:batch],
            torch.randn(batch, cfg.cross_attention_dim, 1, 77, generator=g), torch.randn(batch, pooled, generator=g),
            torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]]).expand(batch, 6).clone())


def _diffusers(unet, x, t, ehs, te, ti):
    return unet(x, t, ehs.squeeze(2).transpose(1, 2), added_cond_kwargs={"text_embeds": te, "time_ids": ti}).sample


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="session")
def dense_unet(convert_model_path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(convert_model_path / "unet", torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("attention", ["split-einsum", "original"])
@torch.no_grad()
def test_unet_steps_match_diffusers(dense_unet, attention):
    from pocketsd.convert.unet_graph import UnetSteps

    args = _inputs(dense_unet)
    ref = _diffusers(dense_unet, *args)
    out = UnetSteps(dense_unet, attention)(*args)
    assert out.shape == ref.shape
    # fp32 on the same weights: only summation order differs (per-head einsums, channel-axis layer norm).
    assert _rel(out, ref) < 1e-5


@torch.no_grad()
def test_split_einsum_really_rewrites(dense_unet):
    from pocketsd.convert.ane import SplitEinsumAttention, Transformer2DChannels
    from pocketsd.convert.unet_graph import UnetSteps

    steps = UnetSteps(dense_unet, "split-einsum")
    kinds = {type(m).__name__ for m in steps.modules()}
    assert "Transformer2DChannels" in kinds and "SplitEinsumAttention" in kinds
    assert "Transformer2DModel" not in kinds and "Attention" not in kinds
    # Every Linear inside the rewritten transformers became a 1×1 conv.
    for t in (m for m in steps.modules() if isinstance(m, Transformer2DChannels)):
        assert not any(isinstance(m, torch.nn.Linear) for m in t.modules())
    from pocketsd.convert.ane import TransformerBlockChannels

    assert sum(isinstance(m, SplitEinsumAttention) for m in steps.modules()) == 2 * sum(
        isinstance(m, TransformerBlockChannels) for m in steps.modules())


@pytest.mark.parametrize("attention", ["split-einsum", "original"])
@torch.no_grad()
def test_compressed_export_matches_dequantized_model(quick_compressed, attention):
    from diffusers import UNet2DConditionModel

    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.convert.unet_graph import UnetSteps
    from pocketsd.palettize.layer import compressed_layers

    compressed = read_compressed_model(quick_compressed)
    stored = compressed_unet_layers(quick_compressed)
    dense = UNet2DConditionModel.from_config({k: v for k, v in compressed.config("unet").items() if not k.startswith("_")})
    names = set(stored)
    sd = {k: v.float() for k, v in compressed.state_dict("unet").items() if k.rpartition(".")[0] not in names}
    for name, layer in stored.items():
        sd[f"{name}.weight"] = layer.effective_weight()
        if layer.bias is not None:
            sd[f"{name}.bias"] = layer.bias.float()
    dense.load_state_dict(sd)
    from pocketsd.models.components import load_compressed_component

    unet = load_compressed_component(compressed, "unet", "export")
    layers = compressed_layers(unet)
    assert set(layers) == names and {l.quantizer for l in stored.values()} == {"palette", "int4"}
    args = _inputs(dense.eval())
    # Residual + separate low-rank branch + multiply by 1/s vs one dense weight: fp32 rounding only.
    assert _rel(UnetSteps(unet, attention)(*args), _diffusers(dense, *args)) < 1e-4


@torch.no_grad()
def test_chunks_compose_to_the_whole_and_balance(dense_unet):
    from pocketsd.convert.unet_graph import UnetChunk1, UnetChunk2, UnetSteps, chunk_output_names

    steps = UnetSteps(dense_unet, "split-einsum")
    cut = steps.balanced_cut()
    args = _inputs(dense_unet)
    mids = UnetChunk1(steps, cut)(*args)
    assert len(mids) == len(chunk_output_names(steps.skips_at(cut)))
    out = UnetChunk2(steps, cut)(args[2], *mids)
    assert torch.equal(out, steps(*args))
    # Balanced: the two halves differ by less than the largest single step.
    first = sum(s.bytes for s in steps.steps[:cut])
    rest = sum(s.bytes for s in steps.steps[cut:])
    assert abs(first - rest) <= max(s.bytes for s in steps.steps) + steps.weight_bytes() * 0.1


@torch.no_grad()
def test_lora_appended_to_lowrank_branch_equals_dense_delta(quick_compressed):
    layers = compressed_unet_layers(quick_compressed, "export")
    name, layer = next((n, l) for n, l in layers.items() if l.kind == "linear" and l.smooth is not None)
    rank_before = layer.rank
    out_f, in_f = layer.shape
    g = torch.Generator().manual_seed(1)
    b, a = torch.randn(out_f, 3, generator=g) * 0.1, torch.randn(3, in_f, generator=g) * 0.1
    x = torch.randn(5, in_f, generator=g)
    before = layer(x)
    residual_before = layer.export_residual.clone()
    layer.append_lowrank(b, a)
    assert torch.equal(layer.export_residual, residual_before)  # the 4-bit part is untouched
    expected = before + x @ (b.half().float() @ a.float()).T
    assert torch.allclose(layer(x), expected, atol=2e-3, rtol=1e-3)
    assert layer.rank == rank_before + 3


@pytest.mark.parametrize("attention", ["split-einsum", "original"])
@torch.no_grad()
def test_sd1_style_unet_without_text_time(attention):
    """SD 1.x/2.x UNets (no text_embeds/time_ids; conv proj_in for 1.x) take the same path."""
    from diffusers import UNet2DConditionModel

    from pocketsd.convert.unet_graph import UnetSteps

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
                                attention_head_dim=8, use_linear_projection=False).eval()
    x, t, ehs = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.randn(2, 48, 1, 77)
    ref = unet(x, t, ehs.squeeze(2).transpose(1, 2)).sample
    assert _rel(UnetSteps(unet, attention)(x, t, ehs), ref) < 1e-5
