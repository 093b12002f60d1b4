"""Autoencoder models whose bottleneck is the collective variable.

* :class:`AutoEncoder` -- symmetric MLP ``n_features - hidden... - n_cv - ...hidden - n_features``;
  hidden layers use the chosen activation, the bottleneck and the output are linear.
  Options (all training-time only; the exported CV is always ``encode``):

  - ``variational=True``: the encoder predicts a mean and a log-variance; the code is
    sampled with the reparameterisation trick and a KL term with weight ``beta`` is added.
    The CV is the *mean* of the code.
  - ``noise_std > 0``: denoising autoencoder (Gaussian noise of that std added to the
    inputs, which are standardised features, so the std is in standardised units).
  - ``l1_code > 0``: sparse autoencoder (L1 penalty on the code).

Alanine dipeptide seed: ``AutoEncoder(24, hidden=(40,), n_cv=2, activation="tanh")``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ModelSpec", "AutoEncoder", "build_model", "ACTIVATIONS"]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


@dataclass
class ModelSpec:
    """Architecture and loss options of an :class:`AutoEncoder`.

    Parameters
    ----------
    n_features : int
        Input (and output) dimension.
    hidden : sequence of int
        Encoder hidden-layer widths (the decoder mirrors them). Seed: ``(40,)``.
    n_cv : int
        Bottleneck dimension = CV dimension (1, 2 or 3 for eABF).
    activation : str
        One of ``ACTIVATIONS`` (default ``"tanh"``).
    variational : bool
        Variational autoencoder (CV = mean of the code).
    beta : float
        Weight of the KL term (VAE only).
    noise_std : float
        Gaussian input-noise std for a denoising autoencoder (0 = off), in input units.
    l1_code : float
        L1 penalty weight on the code for a sparse autoencoder (0 = off).
    """

    n_features: int
    hidden: Tuple[int, ...] = (40,)
    n_cv: int = 2
    activation: str = "tanh"
    variational: bool = False
    beta: float = 1e-3
    noise_std: float = 0.0
    l1_code: float = 0.0

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if self.n_cv < 1:
            raise ValueError(f"n_cv must be >= 1, got {self.n_cv}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be >= 1, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        for name in ("beta", "noise_std", "l1_code"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "ModelSpec":
        return cls(**d)


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers with activations between them, none after the last."""
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """Symmetric MLP autoencoder (plain, denoising, sparse or variational).

    Parameters
    ----------
    spec : ModelSpec
        Architecture and loss options.

    Attributes
    ----------
    encoder : nn.Sequential
        Input -> code (for a VAE: input -> code mean; see :meth:`cv_encoder`).
    logvar_head : nn.Linear or None
        VAE only: last hidden layer -> log-variance of the code.
    decoder : nn.Sequential
        Code -> reconstruction.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        sizes = [spec.n_features, *spec.hidden, spec.n_cv]
        self.encoder = _mlp(sizes, spec.activation)
        self.logvar_head: Optional[nn.Linear] = None
        if spec.variational:
            width = spec.hidden[-1] if spec.hidden else spec.n_features
            self.logvar_head = nn.Linear(width, spec.n_cv)
        self.decoder = _mlp(sizes[::-1], spec.activation)

    @property
    def n_cv(self) -> int:
        return self.spec.n_cv

    def _trunk(self, x: Tensor) -> Tensor:
        # all encoder layers but the last Linear
        for layer in list(self.encoder)[:-1]:
            x = layer(x)
        return x

    def encode(self, x: Tensor) -> Tensor:
        """The CV: code (code mean for a VAE), shape (..., n_cv)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction ``decode(encode(x))``."""
        return self.decoder(self.encoder(x))

    def cv_encoder(self) -> nn.Sequential:
        """The module mapping inputs to the CV (TorchScript-able)."""
        return self.encoder

    def per_sample_loss(self, x: Tensor, generator: Optional[torch.Generator] = None, train: bool = True) -> Tensor:
        """Per-sample loss (T,): squared reconstruction error summed over features,
        plus the sparse (L1 of code) and VAE (beta * KL) terms when enabled.

        With ``train=True`` the denoising noise and the VAE sampling are applied
        (random numbers drawn from ``generator``); with ``train=False`` the evaluation
        is deterministic (no input noise, code = mean) but the penalty terms are kept
        so that training and validation losses are comparable.
        """
        spec = self.spec
        inp = x
        if train and spec.noise_std > 0:
            inp = x + spec.noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if spec.variational:
            h = self._trunk(inp)
            mu = self.encoder[-1](h)
            logvar = self.logvar_head(h).clamp(-20.0, 10.0)
            if train:
                eps = torch.randn(mu.shape, generator=generator, device=x.device, dtype=x.dtype)
                z = mu + torch.exp(0.5 * logvar) * eps
            else:
                z = mu
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        else:
            z = self.encoder(inp)
            mu = z
            kl = None
        rec = self.decoder(z)
        loss = (rec - x).pow(2).sum(-1)
        if spec.l1_code > 0:
            loss = loss + spec.l1_code * mu.abs().sum(-1)
        if kl is not None and spec.beta > 0:
            loss = loss + spec.beta * kl
        return loss


def build_model(n_features: int, **kwargs) -> AutoEncoder:
    """Convenience constructor: ``build_model(24, hidden=(40,), n_cv=2)``."""
    return AutoEncoder(ModelSpec(n_features=n_features, **kwargs))
