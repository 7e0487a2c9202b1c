"""The training engine.

    step        the objects of a run (data, text encoder, denoiser, optimizer, schedule, EMA) and ONE optimizer step
    train       the training loop, read top to bottom: epochs of steps, logs, validation, samples, checkpoints,
                resume; `train()` runs one variant into a run directory
    checkpoint  checkpoints (atomic, hash-checked, loaded with weights_only=True) and a finished run's final weights
    logs        what a run writes while it trains: the CSV rows, TensorBoard, progress.json, metadata and summary
    runtime     devices, mixed precision, threads, RNG states, stop signals, trackers, memory
    launch      the same run on several local processes (accelerate's notebook_launcher)
"""
