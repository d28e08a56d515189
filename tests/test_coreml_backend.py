"""The Core ML pipeline path, run on Linux through a fake predictor that serves the torch reference model.

Only `MLModel.predict` is replaced: the fake takes the bundle's input names, shapes, batch and dtypes exactly as the
manifest declares them (Apple's layout: float32 token ids, (B, D, 1, 77) hidden states, batch-2 UNet, batch-1
text encoders and VAE) and checks them on every call, so tokenization from vocab.json/merges.txt, batching,
layout changes, CFG, scheduling and image handling are the real code.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from pocketsd.errors import BadInput, PlatformUnsupported
from pocketsd.pipeline.coreml_backend import CoreMLBackend, coreml_unavailable_message
from pocketsd.pipeline.coreml_bundle import TensorSpec, read_bundle
from pocketsd.pipeline.generate import GenerationRequest, generate

STEPS = 4


class FakePredictor:
    """Serves `fn(feeds)` under declared specs; fails loudly when the backend feeds anything else."""

    def __init__(self, inputs: dict, outputs: dict, fn, calls: list):
        self.inputs, self.outputs, self.fn, self.calls = inputs, outputs, fn, calls

    def predict(self, feeds):
        assert set(feeds) == set(self.inputs), (sorted(feeds), sorted(self.inputs))
        for name, spec in self.inputs.items():
            assert feeds[name].shape == spec.shape, (name, feeds[name].shape, spec.shape)
            assert feeds[name].dtype == np.dtype(spec.dtype), (name, feeds[name].dtype, spec.dtype)
        self.calls.append(sorted(feeds))
        with torch.inference_mode():
            out = {k: v.float().numpy() for k, v in self.fn({k: torch.from_numpy(v) for k, v in feeds.items()}).items()}
        for name, spec in self.outputs.items():
            assert out[name].shape == spec.shape, (name, out[name].shape, spec.shape)
        return out


def _io(specs):
    return [{"name": s.name, "shape": list(s.shape), "dtype": "float32"} for s in specs]


def _torch_functions(pipe, chunked: bool):
    """name → (inputs, outputs, fn): the I/O specs `pocketsd convert` writes (Apple's names and layouts), each
    served by the torch reference model."""
    from pocketsd.convert.export import text_encoder_specs, unet_specs, vae_specs

    te1, te2, unet, vae = pipe.text_encoder, pipe.text_encoder_2, pipe.unet, pipe.vae
    size = unet.config.sample_size * 8
    proj = te2.config.projection_dim

    def text(enc, pooled_key):
        def fn(f):
            out = enc(f["input_ids"].long(), output_hidden_states=True)
            return {"hidden_embeds": out.hidden_states[-2], "pooled_outputs": out[pooled_key]}
        return fn

    def unet_fn(f):
        ehs = f["encoder_hidden_states"][:, :, 0, :].transpose(1, 2)  # (B, D, 1, 77) → (B, 77, D)
        return {"noise_pred": unet(f["sample"], f["timestep"], encoder_hidden_states=ehs, return_dict=False,
                                   added_cond_kwargs={"text_embeds": f["text_embeds"], "time_ids": f["time_ids"]})[0]}

    (dec_in, dec_out), (enc_in, enc_out) = vae_specs(vae, (size, size))
    dec_name, enc_name = dec_in[0].name, enc_in[0].name
    models = {
        "TextEncoder": (*text_encoder_specs(te1, xl=True), text(te1, "pooler_output")),
        "TextEncoder2": (*text_encoder_specs(te2, xl=True), text(te2, "text_embeds")),
        "VAEDecoder": (dec_in, dec_out, lambda f: {"image": vae.decode(f[dec_name], return_dict=False)[0]}),
        "VAEEncoder": (enc_in, enc_out, lambda f: {"latent": vae.encode(f[enc_name]).latent_dist.parameters}),
    }
    unet_in, unet_out = unet_specs(unet.config, (unet.config.sample_size,) * 2, 2, 77, proj)
    if not chunked:
        models["Unet"] = (unet_in, unet_out, unet_fn)
    else:
        # A two-chunk split as the Swift package runs it: chunk 2 takes chunk 1's outputs plus the original inputs.
        # (The fake splits at the output; a real split cuts the network in the middle — same plumbing.)
        sample = next(s for s in unet_in if s.name == "sample")
        partial = type(sample)("partial", sample.shape)
        models["UnetChunk1"] = (unet_in, [partial], lambda f: {"partial": unet_fn(f)["noise_pred"] - f["sample"]})
        models["UnetChunk2"] = ([partial, sample], unet_out, lambda f: {"noise_pred": f["partial"] + f["sample"]})
    return models


def _controlnet_functions(pipe, controlnets: dict):
    """A UNet taking ControlNet residuals and `controlnet/<Name>` packages, with the I/O `pocketsd convert
    --controlnet` writes (convert.export.controlnet_specs / unet_specs(residuals=True)), served by torch modules."""
    from types import SimpleNamespace

    from pocketsd.artifacts.bundle import MID_RESIDUAL, down_residual
    from pocketsd.convert.export import controlnet_specs, unet_specs

    unet, side = pipe.unet, pipe.unet.config.sample_size
    proj = pipe.text_encoder_2.config.projection_dim
    unet_in, unet_out = unet_specs(unet.config, (side, side), 2, 77, proj, residuals=True)
    n_down = sum(1 for s in unet_in if s.name.startswith("additional_residual_"))

    def unet_fn(f):
        ehs = f["encoder_hidden_states"][:, :, 0, :].transpose(1, 2)
        return {"noise_pred": unet(f["sample"], f["timestep"], encoder_hidden_states=ehs, return_dict=False,
                                   added_cond_kwargs={"text_embeds": f["text_embeds"], "time_ids": f["time_ids"]},
                                   down_block_additional_residuals=[f[down_residual(i)] for i in range(n_down)],
                                   mid_block_additional_residual=f[MID_RESIDUAL])[0]}

    models = {"Unet": (unet_in, unet_out, unet_fn)}
    for name, cn in controlnets.items():
        ins, outs = controlnet_specs(SimpleNamespace(**cn.config), (side, side), (side * 8, side * 8), 2, 77, proj)

        def cn_fn(f, cn=cn, outs=outs):
            ehs = f["encoder_hidden_states"][:, :, 0, :].transpose(1, 2)
            down, mid = cn(f["sample"], f["timestep"], encoder_hidden_states=ehs, controlnet_cond=f["controlnet_cond"],
                           added_cond_kwargs={"text_embeds": f["text_embeds"], "time_ids": f["time_ids"]},
                           return_dict=False)
            return dict(zip([o.name for o in outs], [*down, mid]))

        models[f"controlnet/{name}"] = (ins, outs, cn_fn)
    return models


def _write_bundle(folder, pipe, model_path, chunked=False, functions=None, controlnets=None):
    """A bundle folder with the manifest and tokenizer files (the .mlpackages are served by the fake).
    `controlnets` {name: ControlNetModel}: the UNet takes residual inputs and each ControlNet is a package."""
    res = folder / "Resources"
    res.mkdir(parents=True)
    tok = json.loads((model_path / "tokenizer" / "tokenizer.json").read_text())["model"]
    (res / "vocab.json").write_text(json.dumps(tok["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["merges"]]
    (res / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    models = _torch_functions(pipe, chunked)
    if controlnets is not None:
        models.update(_controlnet_functions(pipe, controlnets))
    comps = {}
    for name, (inp, out, _) in models.items():
        comps[name] = {"file": f"Resources/{name}.mlpackage", "inputs": _io(inp), "outputs": _io(out)}
        if functions and name.startswith("Unet"):
            comps[name]["functions"] = functions
    # The keys `pocketsd convert` writes (format 2, pocketsd.artifacts.bundle): the pipeline settings are recorded
    # in the manifest, as for a real bundle.
    size = pipe.unet.config.sample_size
    manifest = {"kind": "coreml", "format_version": 2, "model_type": "sdxl",
                "source_model": {"spec": "reference", "path": str(model_path)},
                "image_size": [size * 8, size * 8], "latent_size": [size, size],
                "vae_scaling_factor": pipe.vae.config.scaling_factor, "vae_shift_factor": None,
                "scheduler_config": json.loads((model_path / "scheduler" / "scheduler_config.json").read_text()),
                "force_zeros_for_empty_prompt": True,
                "tokenizers": [{"pad_token": json.loads((model_path / t / "tokenizer_config.json").read_text()).get(
                    "pad_token", "<|endoftext|>"), "model_max_length": 77} for t in ("tokenizer", "tokenizer_2")],
                "components": comps}
    (folder / "pocketsd.json").write_text(json.dumps(manifest, default=list))
    return models


@pytest.fixture(scope="session")
def fake_bundles(tmp_path_factory, ref_pipeline, ref_model_path):
    root = tmp_path_factory.mktemp("coreml")
    plain = _write_bundle(root / "plain", ref_pipeline, ref_model_path)
    chunked = _write_bundle(root / "chunked", ref_pipeline, ref_model_path, chunked=True)
    return {"plain": (root / "plain", plain), "chunked": (root / "chunked", chunked)}


def _backend(bundle, models, calls=None, **kw):
    calls = calls if calls is not None else []
    seen = {}

    def factory(path, compute_units, function_name, specs):
        name = path.name.split(".")[0]
        if path.parent.name == "controlnet":
            name = f"controlnet/{name}"
        inputs, outputs = specs
        seen.setdefault("functions", []).append((name, function_name))
        return FakePredictor(inputs, outputs, models[name][2], calls)

    backend = CoreMLBackend(bundle, predictor_factory=factory, **kw)
    backend.seen = seen
    return backend


@pytest.fixture(scope="session")
def torch_backend(ref_model_path):
    from pocketsd.pipeline.torch_backend import open_backend

    return open_backend(str(ref_model_path))


def _run(backend, **kw):
    req = GenerationRequest(prompt="a red square on a gray background", steps=STEPS, guidance=5.0, seed=3, **kw)
    return generate(backend, req)


@pytest.fixture(scope="session")
def torch_text2img(torch_backend):
    return _run(torch_backend)


def test_fake_coreml_matches_torch_backend(fake_bundles, torch_text2img):
    bundle, models = fake_bundles["plain"]
    calls = []
    result = _run(_backend(bundle, models, calls))
    # Same scheduler, CFG and seed: only the (fake) network calls differ in how they are batched.
    assert torch.allclose(result.latents, torch_text2img.latents, atol=1e-4)
    a = np.asarray(result.images[0], dtype=np.int16)
    b = np.asarray(torch_text2img.images[0], dtype=np.int16)
    # Same latents through the same VAE: every pixel within 1/255. (A one-pixel mismatch seen once during development
    # came from the reference VAE being swapped on disk between the two fixtures' loads, not from this code.)
    assert np.abs(a - b).max() <= 1
    unet_calls = [c for c in calls if "sample" in c]
    assert len(unet_calls) == STEPS  # the batch-2 UNet takes [negative, positive] in one call per step


def test_chunked_unet_matches(fake_bundles, torch_text2img):
    bundle, models = fake_bundles["chunked"]
    backend = _backend(bundle, models)
    assert backend.info.models_for("unet") == ["UnetChunk1", "UnetChunk2"]
    result = _run(backend)
    assert torch.allclose(result.latents, torch_text2img.latents, atol=1e-4)


def test_no_guidance_pads_the_fixed_batch(fake_bundles, torch_backend):
    # guidance 1 → batch 1 into a batch-2 model: padded, and the padding dropped again.
    bundle, models = fake_bundles["plain"]
    ours = generate(_backend(bundle, models), GenerationRequest(prompt="a blue circle on a white background",
                                                                steps=2, guidance=1.0, seed=5))
    ref = generate(torch_backend, GenerationRequest(prompt="a blue circle on a white background", steps=2, guidance=1.0, seed=5))
    assert torch.allclose(ours.latents, ref.latents, atol=1e-4)


def test_image_to_image_through_vae_encoder(fake_bundles, torch_backend):
    from PIL import Image

    from pocketsd.pipeline.inputs import image_to_tensor

    img = Image.new("RGB", (128, 128), (128, 128, 128))
    img.paste((40, 80, 220), (30, 30, 98, 98))
    bundle, models = fake_bundles["plain"]
    kw = dict(prompt="a blue square on a gray background", steps=4, guidance=5.0, seed=2,
              init_image=image_to_tensor(img), strength=0.5)
    ours = generate(_backend(bundle, models), GenerationRequest(**kw))
    ref = generate(torch_backend, GenerationRequest(**kw))
    assert torch.allclose(ours.latents, ref.latents, atol=1e-4)


def test_tokenizer_from_bundle_files_matches_model(fake_bundles, torch_backend):
    bundle, _ = fake_bundles["plain"]
    toks = read_bundle(bundle).tokenizers()
    assert len(toks) == 2
    for text in ("a purple triangle on a black background, at the top", "Studio LIGHT, product photo!"):
        want = torch_backend.tokenizers[0](text, padding="max_length", max_length=77).input_ids
        assert toks[0](text, padding="max_length", max_length=77, truncation=True).input_ids == want
        assert toks[1].model_max_length == 77


def test_low_memory_unloads_and_reloads(fake_bundles):
    bundle, models = fake_bundles["plain"]
    backend = _backend(bundle, models)
    generate(backend, GenerationRequest(prompt="a red circle on a white background", steps=2, guidance=5.0),
             low_memory=True)
    assert backend._loaded == {}  # every stage freed its models
    assert set(backend.first_load_s) == {"text_encoder", "unet", "vae_decoder"}


def test_multifunction_unet_selects_function(tmp_path, ref_pipeline, ref_model_path):
    models = _write_bundle(tmp_path / "mf", ref_pipeline, ref_model_path, functions=["main", "poster"])
    backend = _backend(tmp_path / "mf", models, function_name="poster")
    backend.load("unet")
    backend.load("vae_decoder")
    assert ("Unet", "poster") in backend.seen["functions"]
    assert ("VAEDecoder", None) in backend.seen["functions"]
    with pytest.raises(BadInput, match="main, poster"):
        _backend(tmp_path / "mf", models, function_name="blueprint")


def test_bad_compute_units_and_missing_bundle(fake_bundles, tmp_path):
    bundle, models = fake_bundles["plain"]
    with pytest.raises(BadInput, match="cpu_and_ne"):
        _backend(bundle, models, compute_units="npu")
    with pytest.raises(BadInput, match="does not exist"):
        read_bundle(tmp_path / "nope")
    (tmp_path / "empty" / "Resources").mkdir(parents=True)
    with pytest.raises(BadInput, match="not a Core ML bundle"):
        read_bundle(tmp_path / "empty")


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_real_coreml_off_macos_is_one_clear_line(fake_bundles, ref_model_path):
    bundle, _ = fake_bundles["plain"]
    with pytest.raises(PlatformUnsupported) as err:
        CoreMLBackend(bundle)
    msg = str(err.value)
    assert "macOS" in msg and "--backend torch" in msg and str(ref_model_path) in msg and "\n" not in msg
    assert "\n" not in coreml_unavailable_message(bundle)


def test_specs_read_from_a_real_mlpackage(tmp_path):
    """Without I/O in the manifest, names/shapes come from the .mlpackage spec (readable off macOS)."""
    import coremltools as ct

    class Tiny(torch.nn.Module):
        def forward(self, z):
            return z * 2.0

    prog = torch.export.export(Tiny().eval(), (torch.zeros(1, 4, 16, 16),)).run_decompositions({})
    model = ct.convert(prog, inputs=[ct.TensorType(name="z", shape=(1, 4, 16, 16), dtype=np.float16)],
                       outputs=[ct.TensorType(name="image")], minimum_deployment_target=ct.target.macOS14)
    res = tmp_path / "b" / "Resources"
    res.mkdir(parents=True)
    model.save(str(res / "Unet.mlpackage"))
    info = read_bundle(tmp_path / "b")
    inputs, outputs = info.specs("Unet")
    assert inputs["z"] == TensorSpec("z", (1, 4, 16, 16), "float16")  # fp16 I/O: the backend casts to it
    assert list(outputs) == ["image"]


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
@pytest.mark.parametrize("backend", ["coreml", "auto"])
def test_cli_coreml_on_linux_exits_2_with_the_torch_command(fake_bundles, tmp_path, capsys, backend):
    from pocketsd.cli import main

    bundle, _ = fake_bundles["plain"]
    code = main(["generate", "a red circle on a white background", "--model", str(bundle), "--backend", backend,
                 "--compute-units", "cpu_and_ne", "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "macOS" in err and "--backend torch" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("model_batch", [1, 2, 3])
def test_run_batched_slices_and_pads_to_the_model_batch(model_batch):
    from pocketsd.pipeline.coreml_backend import run_batched

    calls = []
    spec_in = {"sample": TensorSpec("sample", (model_batch, 2), "float16"), "t": TensorSpec("t", (model_batch,), "float32")}
    spec_out = {"y": TensorSpec("y", (model_batch, 2), "float32")}
    fake = FakePredictor(spec_in, spec_out, lambda f: {"y": f["sample"].float() * f["t"][:, None]}, calls)
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    t = np.arange(1, 6, dtype=np.float64)
    out = run_batched([fake], {"sample": x, "t": t})
    assert np.allclose(out["y"], x * t[:, None])  # fp16 cast on the way in is exact for these small integers
    assert len(calls) == -(-5 // model_batch)


# ---- inpainting and ControlNet on the Core ML path ------------------------------------------------------
def _red_circle_and_mask():
    from PIL import Image, ImageDraw

    from pocketsd.pipeline.inputs import image_to_tensor, load_mask

    img = Image.new("RGB", (128, 128), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((8, 40, 56, 88), fill=(220, 40, 40))
    mask = np.zeros((128, 128), np.uint8)
    mask[:, 64:] = 255
    loaded = load_mask(Image.fromarray(mask), 128, 128, warn=None)
    return img, image_to_tensor(img), loaded


def test_inpainting_through_the_fake_predictor(fake_bundles, torch_backend):
    """The same latent blending and paste-back as the torch backend; the VAEEncoder package encodes the image."""
    img, init, mask = _red_circle_and_mask()
    bundle, models = fake_bundles["plain"]
    calls = []
    kw = dict(prompt="a blue square on a white background, on the right", steps=4, guidance=5.0, seed=4,
              init_image=init, mask=mask.tensor())
    ours = generate(_backend(bundle, models, calls), GenerationRequest(**kw))
    ref = generate(torch_backend, GenerationRequest(**kw))
    assert torch.allclose(ours.latents, ref.latents, atol=1e-4)
    assert any(c == ["x"] for c in calls)  # VAEEncoder ran
    out = np.asarray(ours.images[0], dtype=np.int16)
    assert np.abs(out - np.asarray(img, dtype=np.int16))[mask.alpha == 0].max() == 0  # pixels outside: as they were
    assert np.abs(out - np.asarray(ref.images[0], dtype=np.int16)).max() <= 1


def _random_controlnet(unet, seed=0):
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, unet.config.block_out_channels[0]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters(),
                  *cn.controlnet_cond_embedding.conv_out.parameters()]:
            p.normal_(0, 0.05, generator=g)
    return cn.eval()


@pytest.fixture(scope="module")
def controlnet_bundle(tmp_path_factory, ref_pipeline, ref_model_path):
    cn = _random_controlnet(ref_pipeline.unet)
    folder = tmp_path_factory.mktemp("coreml-cn") / "bundle"
    models = _write_bundle(folder, ref_pipeline, ref_model_path, controlnets={"Sketch": cn})
    return folder, models, cn


def _sketch_control():
    from PIL import Image, ImageDraw

    control = Image.new("RGB", (128, 128), (0, 0, 0))
    ImageDraw.Draw(control).rectangle((70, 30, 120, 80), outline=(255, 255, 255), width=3)
    return control


def test_controlnet_package_feeds_the_unet_residual_inputs(controlnet_bundle, torch_backend):
    """A bundled ControlNet through the same `unet_extra` interface equals the torch ControlNet on the torch UNet,
    with --controlnet-scale and a guidance window applied the same way."""
    from pocketsd.pipeline.controlnet import control_tensor, controlnet_hook, residuals_hook

    bundle, models, cn = controlnet_bundle
    control = _sketch_control()
    calls = []
    backend = _backend(bundle, models, calls)
    window = dict(control_guidance_start=0.0, control_guidance_end=0.5)
    kw = dict(prompt="a red square on a white background", steps=4, guidance=5.0, seed=1, **window)
    ours = generate(backend, GenerationRequest(**kw, unet_extra=controlnet_hook("Sketch", control, backend, scale=0.7)))
    ref = generate(torch_backend, GenerationRequest(**kw, unet_extra=residuals_hook(cn, control_tensor(control), 0.7)))
    assert torch.allclose(ours.latents, ref.latents, atol=1e-4)
    plain = generate(torch_backend, GenerationRequest(**{k: v for k, v in kw.items() if k not in window}))
    assert (ref.latents - plain.latents).abs().max() > 1e-3  # the residuals changed the result
    assert sum(1 for c in calls if "controlnet_cond" in c) == 2  # steps 1 and 2 of 4: inside the window only
    assert backend.controlnet_name == "Sketch"
    # Without a ControlNet the same residual-taking UNet gets zeros: exactly the plain result.
    no_cn = generate(_backend(bundle, models), GenerationRequest(**{k: v for k, v in kw.items() if k not in window}))
    assert torch.allclose(no_cn.latents, plain.latents, atol=1e-4)


def test_controlnet_name_can_be_the_converted_folder(controlnet_bundle, tmp_path):
    from pocketsd.pipeline.controlnet import bundle_controlnet_name

    assert bundle_controlnet_name(tmp_path / "Sketch", ["Sketch"]) == "Sketch"
    with pytest.raises(BadInput, match="has no ControlNet 'Depth'; it has: Sketch"):
        bundle_controlnet_name("Depth", ["Sketch"])


def test_controlnet_that_does_not_fit_the_bundle_unet(controlnet_bundle, fake_bundles, tmp_path, ref_pipeline,
                                                      ref_model_path):
    from pocketsd.pipeline.controlnet import controlnet_hook

    bundle, models, _ = controlnet_bundle
    # A bundle whose UNet has no residual inputs cannot take any ControlNet.
    plain, plain_models = fake_bundles["plain"]
    with pytest.raises(BadInput, match="takes no ControlNet residuals"):
        _backend(plain, plain_models).unet(torch.zeros(2, 4, 16, 16), torch.zeros(2), torch.zeros(2, 77, 128),
                                           None, mid_block_additional_residual=torch.zeros(2, 128, 4, 4))
    # A ControlNet package whose residuals have other block sizes than the UNet's inputs.
    folder = tmp_path / "mismatch"
    _write_bundle(folder, ref_pipeline, ref_model_path, controlnets={"Sketch": _random_controlnet(ref_pipeline.unet)})
    manifest = json.loads((folder / "pocketsd.json").read_text())
    outputs = manifest["components"]["controlnet/Sketch"]["outputs"]
    outputs[-1]["shape"][1] *= 2  # mid block residual with twice the channels
    (folder / "pocketsd.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match="block sizes do not fit"):
        controlnet_hook("Sketch", _sketch_control(), _backend(folder, models))
