"""The benchmark (`python -m t2s bench`): where the time of a training step goes on this device, and how t2s's
denoiser compares with diffusers' `UNet3DConditionModel` at a matched parameter count.

The benchmark drives the engine: it times `t2s.engine.step.Engine.train_step` itself (the optimizer groups of
`build_optimizer`, caption-dropout conditioning, the epoch loader, accelerate's autocast and accumulation), phase by
phase, for t2s's denoiser and for diffusers' UNet behind the same interface. The package, read in order:
`timing` (the machine, `PhaseTimer`, the summary and amortized shares), `flops` (FlopCounterMode on the meta device,
the matmul peak, MFU), `diffusers_model` (the matched UNet), `step` (the engine's step measured, sampling time, the
race), `goals` (the goals table, as data), `report` (bench.json and bench.md), `run` (the whole run), `contention` (one
training alone against two at once, `--contention`), and `defaults` (what the command line shows in its help; the
command itself is in `t2s.cli`).

Phases of one engine step (the config with gradient_accumulation_steps 1 and ema_update_every 1, so every step runs
every phase):
    data              next() of the engine's epoch loader + .to(device)
    text              caption dropout + the frozen text encoder's cached states (steady state: the cache is warm)
    forward_backward  noise and timesteps, the diffusion loss under autocast, backward
    grad_clip         clip_grad_norm_ over every parameter
    optimizer         AdamW step + zero_grad(set_to_none=True)
    ema               one EMA update
Bookkeeping between phases (the lr schedule's step, the step count) is deliberately left untimed: it shows up in the
residual, `residual = step total - sum(phases)`, reported next to the phases. `amortized_shares` weighs the phases
back to the config's accumulation and EMA interval. Step variants (`--variants`) depart from the config as a change
to the engine or the model would (precision, memory format, fused AdamW, torch.compile).

Outputs: `reports/bench/bench.json` and `reports/bench/bench.md`.

On a CPU shared with other work, run with `OMP_WAIT_POLICY=PASSIVE` in the environment (or `--threads 1`): torch's
OpenMP threads busy-wait by default, and one descheduled thread stalls every parallel region. The benchmark warns
when it starts in that situation.
"""
