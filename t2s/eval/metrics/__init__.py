"""Each evaluation metric's math, small and tested.

    from t2s.eval.metrics.video_features import load_i3d
    from t2s.eval.metrics.distances import compute_fvd
    extractor, status = load_i3d()          # (VideoFeatureExtractor | None, why not)
    fvd = compute_fvd(fake, real, extractor)

Conventions
-----------
* Video tensors are ``(batch, channels=3, frames, height, width)`` floats in ``[-1, 1]`` ("clips").
* Pixel metrics (SSIM, PSNR, temporal consistency, motion) rescale to ``[0, 1]`` with ``(x + 1) / 2`` and
  clamp to ``[0, 1]`` (a sampler may overshoot slightly; a saved image would be clipped the same way).
* Paired metrics (LPIPS, SSIM, PSNR) compare ``fake[i]`` with ``real[i]`` frame by frame and average over
  frames and clips with equal weight.
* Metric functions return plain floats. Loaders of pretrained networks return ``(model | None, status)``:
  a metric whose network cannot be loaded is reported as ``None`` with that status, never a stand-in number.

The rooms, in reading order (each imports only those before it; of the rest of t2s only `t2s.rundir`):
    files           weights files: SHA-256, the download policy (T2S_OFFLINE, a quick network probe), downloads kept
                    only when they match a pinned hash, strict state dicts
    video_features  I3D: architecture, loading (TorchScript or state dict), preprocessing, features
    distances       Fréchet distance, FVD, KVD (unbiased polynomial-kernel MMD^2) and its standard error
    perceptual      LPIPS (loading and scoring), SSIM, PSNR
    temporal        temporal consistency, motion magnitude
    hands           find_hands, hand detection rate, DTW, DTW mean joint error
    weights         weights_status: can FVD's and LPIPS's networks be loaded (for `python -m t2s doctor`)
"""
