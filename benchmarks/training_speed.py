"""Training speed: 10^5 frames x 30 features, 2D bottleneck, trained to early stopping.

Synthetic data with a known low-dimensional structure (30 features generated from 2
latent variables through a smooth nonlinear map plus noise, standardised), the default
:class:`aesample.training.TrainingOptions` and the seed-like architecture 30-40-2-40-30
(tanh).  Prints wall seconds, epochs and seconds per epoch (one run).  Target: <= 60 s
on 2 CPU cores.

    python benchmarks/training_speed.py [--frames N] [--threads T] [--batch-size B]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from aesample.models import ModelSpec
from aesample.training import TrainingOptions, fit_autoencoder


def make_data(n: int, n_features: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.uniform(-1.0, 1.0, size=(n, 2))
    A = rng.normal(size=(2, n_features))
    B = rng.normal(size=(2, n_features))
    x = np.tanh(z @ A) + 0.5 * np.sin(2.0 * z @ B) + 0.05 * rng.normal(size=(n, n_features))
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    args = ap.parse_args()
    x = make_data(args.frames)
    opts = TrainingOptions(seed=0, num_threads=args.threads)
    if args.batch_size:
        opts.batch_size = args.batch_size
    if args.lr:
        opts.learning_rate = args.lr
    t0 = time.perf_counter()
    res = fit_autoencoder(x, spec=ModelSpec(n_features=x.shape[1], hidden=(40,), n_cv=2), options=opts)
    dt = time.perf_counter() - t0
    h = res.history
    print(
        f"training_speed: {args.frames} frames x {x.shape[1]} features, 2D bottleneck, batch {opts.batch_size}, "
        f"lr {opts.learning_rate}, threads {args.threads}: {dt:.1f} s, {h['epochs']} epochs "
        f"({dt / h['epochs']:.2f} s/epoch), best epoch {h['best_epoch']}, best val loss {h['best_val_loss']:.4f}, "
        f"stopped early: {h['stopped_early']}  (target <= 60 s)"
    )


if __name__ == "__main__":
    main()
