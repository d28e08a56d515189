"""Evaluation: prompt sets, metrics and the pieces `pocketsd eval` is built from.

- prompt sets live on the ground floor (`pocketsd.data.prompt_sets`, shared with calibration):
  `load_prompt_set(name_or_path, count=None, seed=0, categories=None)` → `PromptSet` of `Prompt`
  (id, text, category, scene); the project's own set (`pocketsd`, default for every model but the reference
  model), the reference grammar (`reference`, `reference-all`), MJHQ-30K, sDCI, COCO, PartiPrompts, plain text;
  `prompt_seed(id, base)` for per-prompt generation seeds.
- `scoring`: `load_scorers(...)`, `score_images(...)` and the streaming `Evaluation` (add batches, gather partial
  states across processes, `results()` once) → one `results.MetricResult` per metric.
- Metrics: `metrics` (PSNR/SSIM via torchmetrics, latent PSNR), `lpips`, `fid`, `clip_score`, `image_reward`,
  `adherence`/`classify` (the reference model's pixels read back); weights from local files only (`weights`
  documents every variable, default location and download command).
- `stats`: mean with t-interval, Wilson interval, percentile bootstrap. `sharding`: accelerate helpers.
"""
