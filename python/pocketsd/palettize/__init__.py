"""The core: tensors in, tensors out. Quantizers (`quantizers`, `packing`), the low-rank decomposition
(`lowrank`), calibration statistics (`calibrate`), the budget allocator (`allocate`), recipes (`recipes`),
one compressed-layer type whose state dict is the on-disk format (`layer`), compressing a network
(`compress`) and LoRAs (`lora`). Nothing here reads or writes files but LoRA files, or draws anything."""
