"""The compress stage: a model folder in, a compressed model folder out (`pocketsd compress`), and LoRAs merged
into a compressed folder's low-rank branches without re-quantizing (`pocketsd lora merge`)."""
