"""Preview images during training: the same prompts and seeds every time, so the grids show the style arrive.

Rendered by diffusers' own pipeline around the UNet being trained (its LoRA active), from the text conditioning
computed at the start (or, when the text encoders learn too, computed again with them), with the model's own
scheduler. Written atomically as one PNG row per preview step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts import atomic_write_path
from ..models import ModelComponents
from ..models.components import pipeline_class

GUIDANCE = 5.0


@torch.no_grad()
def render_previews(comps: ModelComponents, unet, cond: tuple, negative: tuple, prompts: list[str], resolution: int,
                    steps: int, seed: int, path: Path, device: str, text_encoders: dict | None = None) -> Path:
    from PIL import Image

    unet.eval()
    for module in (text_encoders or {}).values():
        module.eval()
    vae = comps.get("vae").to(device)
    scheduler = comps.get("scheduler")
    hidden, pooled = cond
    neg_hidden, neg_pooled = negative
    count = len(prompts)
    kwargs = dict(prompt_embeds=hidden.to(device), negative_prompt_embeds=neg_hidden.expand(count, -1, -1).to(device),
                  num_inference_steps=steps, guidance_scale=GUIDANCE, height=resolution, width=resolution,
                  generator=[torch.Generator().manual_seed((seed + k) % 2**64) for k in range(count)])
    family = comps.model_family
    # the text encoders stay out of the pipeline: the conditioning is given as embeddings
    no_text = {name: None for t in family.text_encoders for name in (t.component, t.tokenizer)}
    pipe = pipeline_class(family)(vae=vae, unet=unet, scheduler=scheduler, **no_text, **comps.pipeline_kwargs())
    if family.pooled_embeddings:
        zeros = comps.force_zeros_for_empty_prompt
        kwargs["pooled_prompt_embeds"] = pooled.to(device)
        if zeros:  # what the pipeline does for an empty negative prompt on this model
            kwargs["negative_prompt_embeds"] = torch.zeros_like(kwargs["prompt_embeds"])
            kwargs["negative_pooled_prompt_embeds"] = torch.zeros_like(kwargs["pooled_prompt_embeds"])
        else:
            kwargs["negative_pooled_prompt_embeds"] = neg_pooled.expand(count, -1).to(device)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**kwargs).images
    comps.release("vae")
    w, h = images[0].size
    row = Image.new("RGB", (w * count, h))
    for k, im in enumerate(images):
        row.paste(im, (k * w, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_write_path(path)
    try:
        row.save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
