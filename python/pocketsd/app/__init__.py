"""`pocketsd app`: the web demo — fp16 against the 4-bit model side by side, with time and memory.

A Gradio page (`ui.build_app`) over the one generation path (`pipeline.session.GenerationSession`): this package
holds the page, the model cache, upload checks and the comparison view, and no generation code of its own.

    config.py    what the server is told (limits, models, address) — `AppConfig`
    models.py    the model choices, the compressed reference model made once under build/, the session cache
    uploads.py   uploads and sketches checked before anything loads (size, pixels, broken, empty)
    compare.py   one request on one or two models: progress, cancel, saved PNG + report, PSNR
    view.py      the numbers under each image (stage table, memory, model size) and the step-time chart data
    ui.py        the Gradio Blocks and its event wiring
    server.py    `pocketsd app`: prepare the models, warn about public addresses, launch
"""
