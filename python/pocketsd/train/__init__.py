"""Training stage: `pocketsd lora train` — a user's own LoRA from captioned images, on an fp16 or a compressed
model (4-bit codes and existing branches frozen, only the new factors learn). Imports ground, core and models,
never another stage."""
