"""Shared fixtures: deterministic torch, built systems cached per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def cuda_available() -> bool:
    """True when an OpenMM CUDA context can be created (never on CI)."""
    from aesample.platforms import _gpu_usable, available_platforms

    return "CUDA" in available_platforms() and _gpu_usable("CUDA")


@pytest.fixture(scope="session")
def adp():
    """Alanine dipeptide in vacuum (built once per test session; do not mutate its System)."""
    from aesample.systems import build_system

    return build_system("alanine-dipeptide")
