"""The reference model's tools (top floor): its architecture, procedural drawing, tokenizer files, training,
LoRA training and adherence check. Its data (weights, LoRAs, grammar) live on the ground floor in `pocketsd.data`."""
