"""ControlNets into the bundle: `pocketsd convert --controlnet [NAME=]DIR [--controlnet-recipe R]`.

Each diffusers ControlNet becomes `Resources/controlnet/<Name>.mlpackage` with Apple's ControlNet layout
(`controlnet_graph`): the UNet's inputs plus `controlnet_cond` in, the residuals out, named exactly as the extra
inputs the bundle's UNet is then converted with (unet_job). With a recipe its Linear/Conv2d layers are compressed by
the same machinery as the UNet (`palettize.compress.compress_network`, then the layers' export mode, our codes
placed as constexpr ops by `mil_weights` and read back bit for bit). There is no calibration data for a ControlNet
at conversion time, so it is compressed without smoothing, its errors measured on the weights (as for SDXL-size
random weights in benchmarks/sdxl_scale.py).
"""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import torch

from ..artifacts import bundle as names
from ..errors import BadInput
from ..models.controlnet import load_controlnet
from . import bundle as B
from .export import controlnet_specs, convert_module
from .plan import ConvertPlan, source_digest


def controlnet_fingerprint(plan: ConvertPlan, name: str) -> dict:
    o, recipe = plan.opts, plan.controlnet_recipe
    return dict(plan.base_fingerprint, attention=o.attention, batch=1 if o.unet_batch_one else 2,
                recipe=recipe.to_dict() if recipe is not None else None,
                source_sha=source_digest(plan, names.controlnet_package(name)), precision="float16")


def _accounting(model: torch.nn.Module) -> dict:
    """Bytes and bits per parameter as stored: compressed layers at their stored size (codes, tables or scales,
    low-rank factors, smoothing, bias), everything else fp16."""
    from ..palettize.layer import CompressedLayer, compressed_layers

    layers = compressed_layers(model)
    owned = {id(t) for layer in layers.values() for t in layer.buffers()} | \
            {id(t) for layer in layers.values() for t in layer.parameters()}
    params = sum(layer.numel for layer in layers.values()) + sum(
        (layer.bias.numel() if layer.bias is not None else 0) for layer in layers.values())
    stored = sum(layer.stored_bytes() for layer in layers.values())
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in owned or not t.is_floating_point():
            continue
        params += t.numel()
        stored += 2 * t.numel()
    return {"parameters": int(params), "stored_bytes": int(stored),
            "bits_per_param": round(8 * stored / params, 3) if params else None,
            "compressed_layers": len(layers), "layer_type": CompressedLayer.__name__}


def convert_controlnet(plan: ConvertPlan, manifest: dict, name: str, folder, fingerprint: dict, log) -> None:
    from ..palettize.compress import compress_network
    from ..palettize.layer import compressed_layers, set_mode
    from .controlnet_graph import ControlNetSteps
    from .mil_weights import CompressedWeights, verify_package
    from .unet_job import _out_specs, _pooled_dim

    key = names.controlnet_package(name)
    recipe = plan.controlnet_recipe
    log(f"{key}: converting (float16, {plan.opts.attention}{', ' + recipe.name if recipe else ''})")
    t0 = time.time()
    extra: dict = {}
    with B.PeakRSS() as rss:
        controlnet = load_controlnet(folder, vars(plan.unet_config), dtype=torch.float32)
        report = None
        if recipe is not None:
            from ..palettize.recipes import compressible_layers

            zero = [n for n, m in compressible_layers(controlnet)[0].items() if not m.weight.detach().any()]
            if zero:  # an untrained ControlNet's zero convolutions: nothing to quantize, and no error to measure
                raise BadInput(f"ControlNet {name} has all-zero layers ({zero[0]}, …: untrained?); convert it without "
                               "--controlnet-recipe")
            t_compress = time.time()
            report = compress_network(controlnet, recipe, None)
            extra["compress_seconds"] = round(time.time() - t_compress, 2)
            set_mode(controlnet, "export")
        layers = compressed_layers(controlnet)
        config = SimpleNamespace(**controlnet.config)
        ins, outs = controlnet_specs(config, plan.latent_hw, plan.image_hw, 1 if plan.opts.unet_batch_one else 2,
                                     77, _pooled_dim(plan))
        module = ControlNetSteps(controlnet, plan.opts.attention)
        if module.output_names != [o.name for o in outs]:
            raise RuntimeError(f"{key}: the ControlNet gives {len(module.output_names)} residuals, the UNet takes "
                               f"{len(outs)}")
        weights = CompressedWeights(layers) if layers else None
        mlmodel = convert_module(module, ins, [o.name for o in outs], plan.opts.target, compressed=weights)
        if weights is not None and weights.missing():  # never ship a compressed layer silently dequantized
            raise RuntimeError(f"{key}: {len(weights.missing())} compressed layers were not placed as constexpr ops, "
                               f"e.g. {weights.missing()[0]}")
        converted = _out_specs(mlmodel, [o.name for o in outs])
        if [tuple(s.shape) for s in converted] != [tuple(s.shape) for s in outs]:
            raise RuntimeError(f"{key}: converted residual shapes {converted} differ from the UNet's inputs {outs}")
        package = plan.resources / names.CONTROLNET_DIR / f"{name}.mlpackage"
        package.parent.mkdir(parents=True, exist_ok=True)
        B.save_package_atomically(mlmodel, package)
        if layers:
            extra["verify"] = verify_package(package, layers)
        del mlmodel, module
    extra["controlnet"] = {"source": str(folder), "conditioning_channels": int(getattr(config, "conditioning_channels", 3)),
                           "recipe": recipe.to_dict() if recipe is not None else None,
                           "fp16_layers": report.fp16_layers if report is not None else None,
                           "accounting": _accounting(controlnet)}
    B.record_package(plan.out, manifest, key, package, inputs=ins, outputs=outs, precision="float16",
                     seconds=time.time() - t0, peak_mb=rss.peak_mb, fingerprint=fingerprint, extra=extra)
    acc = extra["controlnet"]["accounting"]
    log(f"{key}: done in {time.time() - t0:.1f} s ({B.folder_bytes(package) / 2**20:.1f} MB, "
        f"{acc['bits_per_param']} bits/param)")


def convert_controlnets(plan: ConvertPlan, manifest: dict, previous: dict, log, progress=None) -> None:
    """Every --controlnet of the plan (skipping the ones already done under the same options), and the stale
    ControlNet packages of an earlier run dropped: a UNet converted without them cannot take their residuals."""
    from ..artifacts.bundle import write_bundle_manifest

    wanted = {names.controlnet_package(n) for n, _ in plan.controlnets}
    if any(plan.wanted(n) for n in plan.unet_packages):  # this run (re)made the UNet: others' residuals are stale
        for stale in [k for k in manifest["components"] if k.startswith(names.CONTROLNET_DIR + "/") and k not in wanted]:
            manifest["components"].pop(stale)
            for suffix in (".mlpackage", ".mlmodelc"):
                shutil.rmtree(plan.resources / f"{stale}{suffix}", ignore_errors=True)
    for name, folder in plan.controlnets:
        key = names.controlnet_package(name)
        if not plan.wanted(key):
            continue
        fingerprint = controlnet_fingerprint(plan, name)
        if not plan.opts.force and B.component_done(plan.out, previous, key, fingerprint):
            log(f"{key}: already converted (sha256 matches), skipping; --force to redo")
        else:
            convert_controlnet(plan, manifest, name, folder, fingerprint, log)
            write_bundle_manifest(plan.out, manifest)
        if progress:
            progress(key)
