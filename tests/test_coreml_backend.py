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


def _write_bundle(folder, pipe, model_path, chunked=False, functions=None):
    """A bundle folder with the manifest and tokenizer files (the .mlpackages are served by the fake)."""
    res = folder / "Resources"
    res.mkdir(parents=True)
    tok = json.loads((model_path / "tokenizer" / "tokenizer.json").read_text())["model"]
    (res / "vocab.json").write_text(json.dumps(tok["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["merges"]]
    (res / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    models = _torch_functions(pipe, chunked)
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
