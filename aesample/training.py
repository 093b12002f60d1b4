"""Weighted, reproducible training of autoencoder CVs and the CV scaling.

Loss (per data set)::

    L = sum_i w_i l_i / sum_i w_i,      l_i = ||x_i - f(x_i)||^2 (+ sparse / KL terms)

with uniform weights when none are given (weights typically come from reweighting a
biased eABF run).  Minibatch losses use weights normalised to mean 1 over the
training set, ``mean_b(w_i l_i)``, which is an unbiased estimate of ``L`` (a
per-batch ``sum w l / sum w`` would be a biased ratio estimator for skewed weights).

Training: Adam, shuffled minibatches drawn from pre-computed feature tensors (features
are computed once per data set by :mod:`aesample.features`), a seeded train/validation
split, early stopping on the validation loss with the best weights restored, optional
warm start from a previous model state, CPU or CUDA.  Same seed + same data -> identical
weights on CPU.

CV scaling (:class:`CVScaling`): each CV component is mapped affinely so that the
(weighted) training data span a fixed range, default [-1, 1].  The span is the weighted
quantile range ``[q, 1 - q]`` of the component (``q = 0``: min/max over frames with
non-zero weight, the default; ``q > 0``, e.g. 0.001, is robust to a few outliers, at the
price of a few frames falling slightly outside the range).  The scaling is folded into
the exported module.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .models import AutoEncoder, ModelSpec

__all__ = [
    "TrainingOptions",
    "TrainingResult",
    "CVScaling",
    "weighted_loss",
    "train_autoencoder",
    "fit_autoencoder",
    "fit_cv_scaling",
    "weighted_quantile",
    "save_history",
    "split_indices",
]


# ---------------------------------------------------------------------------------
# options / results
# ---------------------------------------------------------------------------------
@dataclass
class TrainingOptions:
    """Optimisation settings.

    Parameters
    ----------
    learning_rate : float
        Adam learning rate.
    batch_size : int
        Minibatch size (frames).
    max_epochs : int
        Upper bound on epochs.
    patience : int
        Early stopping: stop after this many epochs without a validation improvement
        larger than ``min_delta`` (relative); the best weights are restored.
    min_delta : float
        Relative improvement of the validation loss counted as progress.
    val_fraction : float
        Fraction of frames held out for validation (0 < f < 1), drawn with ``seed``.
    weight_decay : float
        Adam weight decay (L2).
    seed : int
        Seeds model initialisation (in :func:`fit_autoencoder`), split, shuffling and
        the noise of denoising / variational models.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:0"``... (``"auto"``: CUDA when available).
    num_threads : int or None
        ``torch.set_num_threads`` during training (None leaves it unchanged).  Default 1:
        these MLPs are too small to gain from intra-op threads, and on a shared 2-core
        machine 2 threads were measured 10-50x slower per step than 1.
    eval_batch_size : int
        Chunk size for the (gradient-free) validation loss.
    """

    learning_rate: float = 3e-3
    batch_size: int = 1024
    max_epochs: int = 500
    patience: int = 15
    min_delta: float = 1e-4
    val_fraction: float = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = 1
    eval_batch_size: int = 65536

    def __post_init__(self):
        if not (0.0 < self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"max_epochs and patience must be >= 1, got {self.max_epochs}, {self.patience}")


@dataclass
class TrainingResult:
    """Output of training: the model (best weights restored) and its history."""

    model: AutoEncoder
    history: Dict[str, Any]

    @property
    def best_val_loss(self) -> float:
        return float(self.history["best_val_loss"])

    def summary(self) -> Dict[str, Any]:
        h = self.history
        return {k: h[k] for k in ("best_epoch", "best_val_loss", "epochs", "seconds", "stopped_early", "n_train", "n_val")}


@dataclass
class CVScaling:
    """Affine per-component CV map ``xi = z * factor + shift``."""

    factor: List[float]
    shift: List[float]
    target_range: Tuple[float, float] = (-1.0, 1.0)
    source_range: Optional[List[Tuple[float, float]]] = None

    def apply(self, z):
        if isinstance(z, Tensor):
            return z * self.factor_tensor(z) + self.shift_tensor(z)
        return np.asarray(z) * np.asarray(self.factor) + np.asarray(self.shift)

    def factor_tensor(self, like: Tensor) -> Tensor:
        return torch.as_tensor(self.factor, dtype=like.dtype, device=like.device)

    def shift_tensor(self, like: Tensor) -> Tensor:
        return torch.as_tensor(self.shift, dtype=like.dtype, device=like.device)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "factor": list(map(float, self.factor)),
            "shift": list(map(float, self.shift)),
            "target_range": list(map(float, self.target_range)),
            "source_range": None if self.source_range is None else [list(map(float, r)) for r in self.source_range],
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CVScaling":
        return cls(
            factor=list(d["factor"]),
            shift=list(d["shift"]),
            target_range=tuple(d.get("target_range", (-1.0, 1.0))),
            source_range=None if d.get("source_range") is None else [tuple(r) for r in d["source_range"]],
        )


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def _as_weights(weights, n: int, name: str = "weights") -> Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, Tensor) else weights, dtype=torch.float64).reshape(-1)
    if w.numel() != n:
        raise ValueError(f"{name} has {w.numel()} entries but there are {n} frames")
    if not torch.all(torch.isfinite(w)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if torch.any(w < 0):
        raise ValueError(f"{name} must be non-negative (min {w.min().item():g})")
    if w.sum() <= 0:
        raise ValueError(f"{name} sum to zero")
    return w


def _as_features(features, name: str = "features") -> Tensor:
    x = features if isinstance(features, Tensor) else torch.as_tensor(np.asarray(features))
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n_frames, n_features), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 frames, got {x.shape[0]}")
    if not torch.all(torch.isfinite(x)):
        bad = int((~torch.isfinite(x)).any(1).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or infinite values (first at frame {bad})")
    return x


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_indices(n: int, val_fraction: float, seed: int) -> Tuple[Tensor, Tensor]:
    """Seeded random split of ``range(n)`` into (train, validation) index tensors."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def weighted_loss(model: AutoEncoder, features, weights=None, train: bool = False, generator: Optional[torch.Generator] = None, chunk: int = 65536) -> Tensor:
    """``sum_i w_i l_i / sum_i w_i`` over a data set (uniform weights when None).

    ``train=False`` (default) is the deterministic evaluation (no input noise, VAE code
    = mean).  Returns a 0-d tensor (with gradient if called with grad enabled).
    """
    p = next(model.parameters())
    x = _as_features(features).to(device=p.device, dtype=p.dtype)
    w = _as_weights(weights, x.shape[0]).to(device=p.device, dtype=p.dtype)
    total = x.new_zeros(())
    for s in range(0, x.shape[0], chunk):
        total = total + (model.per_sample_loss(x[s : s + chunk], generator=generator, train=train) * w[s : s + chunk]).sum()
    return total / w.sum()


# ---------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------
def train_autoencoder(
    model: AutoEncoder,
    features,
    weights=None,
    options: Optional[TrainingOptions] = None,
    warm_start: Optional[Dict[str, Tensor]] = None,
    progress: bool = False,
) -> TrainingResult:
    """Train ``model`` in place on (already standardised) features; restore the best weights.

    Parameters
    ----------
    model : AutoEncoder
    features : array or Tensor (T, n_features)
    weights : array (T,), optional
        Non-negative per-frame weights (uniform when None).
    options : TrainingOptions
    warm_start : state_dict, optional
        Parameters loaded into ``model`` before training (previous iteration's model).
    progress : bool
        Print one line per epoch.

    Returns
    -------
    TrainingResult
        ``history`` holds per-epoch ``train_loss`` / ``val_loss`` lists, ``best_epoch``,
        ``best_val_loss``, ``epochs``, ``seconds``, ``stopped_early`` and sizes.
    """
    opt = options or TrainingOptions()
    old_threads = torch.get_num_threads()
    if opt.num_threads:
        torch.set_num_threads(int(opt.num_threads))
    try:
        return _train(model, features, weights, opt, warm_start, progress)
    finally:
        if opt.num_threads:
            torch.set_num_threads(old_threads)


def _train(model, features, weights, opt: TrainingOptions, warm_start, progress) -> TrainingResult:
    t0 = time.perf_counter()
    dev = _device(opt.device)
    if warm_start is not None:
        model.load_state_dict(warm_start)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    x_all = _as_features(features).to(dtype)
    if x_all.shape[1] != model.spec.n_features:
        raise ValueError(f"features have {x_all.shape[1]} columns but the model expects {model.spec.n_features}")
    w_all = _as_weights(weights, x_all.shape[0]).to(dtype)
    tr, va = split_indices(x_all.shape[0], opt.val_fraction, opt.seed)
    x_tr, w_tr = x_all[tr].to(dev), w_all[tr].to(dev)
    x_va, w_va = x_all[va].to(dev), w_all[va].to(dev)
    if float(w_tr.sum()) <= 0 or float(w_va.sum()) <= 0:
        raise ValueError("all weights of the training or the validation subset are zero")
    w_tr = w_tr / w_tr.mean()  # mean_b(w l) is then unbiased for sum w l / sum w

    gen = torch.Generator(device="cpu").manual_seed(int(opt.seed) + 1)
    noise_gen = torch.Generator(device=dev).manual_seed(int(opt.seed) + 2)
    optim = torch.optim.Adam(model.parameters(), lr=opt.learning_rate, weight_decay=opt.weight_decay)

    n = x_tr.shape[0]
    bs = min(opt.batch_size, n)
    n_batches = max(1, n // bs)  # drop the ragged tail (reshuffled every epoch)
    train_curve: List[float] = []
    val_curve: List[float] = []
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = -1
    bad_epochs = 0
    stopped_early = False
    for epoch in range(opt.max_epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)[: n_batches * bs].to(dev).view(n_batches, bs)
        run = torch.zeros((), dtype=dtype, device=dev)
        for b in range(n_batches):
            idx = perm[b]
            loss = (model.per_sample_loss(x_tr[idx], generator=noise_gen, train=True) * w_tr[idx]).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            run += loss.detach()
        model.eval()
        with torch.no_grad():
            vl = float(weighted_loss(model, x_va, w_va, train=False, chunk=opt.eval_batch_size))
        tl = float(run) / n_batches
        train_curve.append(tl)
        val_curve.append(vl)
        if progress:
            print(f"epoch {epoch:4d}  train {tl:.6g}  val {vl:.6g}", flush=True)
        if not math.isfinite(vl):
            raise FloatingPointError(f"validation loss became {vl} at epoch {epoch}; lower the learning rate")
        if vl < best * (1.0 - opt.min_delta) or best_epoch < 0:
            best = min(best, vl)
            best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            best = min(best, vl)
            bad_epochs += 1
            if bad_epochs >= opt.patience:
                stopped_early = True
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        best_val = float(weighted_loss(model, x_va, w_va, train=False, chunk=opt.eval_batch_size))
    history = {
        "epoch": list(range(len(train_curve))),
        "train_loss": train_curve,
        "val_loss": val_curve,
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "epochs": len(train_curve),
        "seconds": time.perf_counter() - t0,
        "stopped_early": stopped_early,
        "n_train": int(n),
        "n_val": int(x_va.shape[0]),
        "options": asdict(opt),
    }
    return TrainingResult(model=model, history=history)


def fit_autoencoder(
    features,
    weights=None,
    spec: Optional[ModelSpec] = None,
    options: Optional[TrainingOptions] = None,
    warm_start: Optional[Dict[str, Tensor]] = None,
    progress: bool = False,
) -> TrainingResult:
    """Build a model (initialised with ``options.seed``) and train it.

    ``spec`` defaults to the seed architecture ``n_features-40-2-40-n_features`` (tanh).
    """
    opt = options or TrainingOptions()
    x = _as_features(features)
    spec = spec or ModelSpec(n_features=int(x.shape[1]))
    torch.manual_seed(int(opt.seed))
    model = AutoEncoder(spec)
    return train_autoencoder(model, x, weights, opt, warm_start=warm_start, progress=progress)


# ---------------------------------------------------------------------------------
# CV scaling
# ---------------------------------------------------------------------------------
def weighted_quantile(values: np.ndarray, weights: Optional[np.ndarray], q: Sequence[float]) -> np.ndarray:
    """Weighted quantiles of 1D ``values`` (frames with zero weight ignored).

    ``q = 0`` / ``1`` give the min / max over frames with positive weight; in between
    the weighted empirical CDF is interpolated at mid-points of the sorted weights.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = w > 0
    v, w = v[keep], w[keep]
    order = np.argsort(v)
    v, w = v[order], w[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.asarray(q, dtype=np.float64), cdf, v, left=v[0], right=v[-1])


def fit_cv_scaling(
    cv_values,
    weights=None,
    target_range: Tuple[float, float] = (-1.0, 1.0),
    quantile: float = 0.0,
) -> CVScaling:
    """Affine map of each CV component so the (weighted) data span ``target_range``.

    Parameters
    ----------
    cv_values : array (T, d)
        Unscaled CV (encoder output) on the training frames.
    weights : array (T,), optional
        Frame weights; frames with zero weight are ignored.
    target_range : (lo, hi)
        Range the data are mapped onto (default [-1, 1]).
    quantile : float
        ``0`` maps min/max; ``q > 0`` maps the weighted ``q`` / ``1 - q`` quantiles.
    """
    z = np.asarray(cv_values.detach().cpu().numpy() if isinstance(cv_values, Tensor) else cv_values, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"cv_values must have shape (n_frames >= 2, d), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("cv_values contain NaN or infinite values")
    lo_t, hi_t = map(float, target_range)
    if not hi_t > lo_t:
        raise ValueError(f"target_range must have lo < hi, got {target_range}")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    w = None if weights is None else _as_weights(weights, z.shape[0]).numpy()
    factor, shift, src = [], [], []
    for k in range(z.shape[1]):
        lo, hi = weighted_quantile(z[:, k], w, [quantile, 1.0 - quantile])
        span = hi - lo
        if not span > 1e-12:
            raise ValueError(f"CV component {k} is constant on the training data ({lo:g}); cannot scale it")
        f = (hi_t - lo_t) / span
        factor.append(f)
        shift.append(lo_t - lo * f)
        src.append((float(lo), float(hi)))
    return CVScaling(factor=factor, shift=shift, target_range=(lo_t, hi_t), source_range=src)


# ---------------------------------------------------------------------------------
# loss curves
# ---------------------------------------------------------------------------------
def save_history(history: Dict[str, Any], prefix: Union[str, Path], plot: bool = True) -> Dict[str, Path]:
    """Write ``prefix.json``, ``prefix.csv`` and (``plot=True``) ``prefix.png`` loss curves.

    Returns the paths written. Files are written atomically.
    """
    from .io import atomic_write_bytes

    prefix = Path(prefix)
    out = {"json": prefix.with_suffix(".json"), "csv": prefix.with_suffix(".csv")}
    atomic_write_bytes(out["json"], json.dumps(history, indent=2, default=str).encode())
    import io

    s = io.StringIO()
    wr = csv.writer(s)
    wr.writerow(["epoch", "train_loss", "val_loss"])
    for e, a, b in zip(history["epoch"], history["train_loss"], history["val_loss"]):
        wr.writerow([e, repr(a), repr(b)])
    atomic_write_bytes(out["csv"], s.getvalue().encode())
    if plot:
        # object-oriented Agg API: no pyplot global state, no display needed
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(history["epoch"], history["train_loss"], label="train")
        ax.plot(history["epoch"], history["val_loss"], label="validation")
        if history.get("best_epoch", -1) >= 0:
            ax.axvline(history["best_epoch"], color="grey", ls=":", label="best")
        ax.set_xlabel("epoch")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("weighted loss")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        out["png"] = prefix.with_suffix(".png")
        atomic_write_bytes(out["png"], buf.getvalue())
    return out
