"""Streaming trajectory input: frames -> features, chunk by chunk (used by the tests; the loop reads frames
with mdtraj directly).

Frames are read with ``mdtraj.iterload`` (DCD, XTC, and any format mdtraj reads), only
the selected atoms are kept, and each chunk is featurised right away by
:class:`aesample.features.AlignedPositions`, so 10^6 frames never need to sit in memory
as full coordinates: the memory held is ``n_frames * n_features`` feature values.
Per-frame weights (e.g. from reweighting a biased run) are carried along.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from aesample.features import AlignedPositions, FeatureError, check_frames_finite

__all__ = ["FrameChunk", "iter_trajectory", "load_frames", "featurize_trajectories", "featurize_frames"]

PathLike = Union[str, Path]


@dataclass
class FrameChunk:
    """A block of consecutive frames.

    Attributes
    ----------
    xyz : ndarray (t, n, 3) float32, nm -- coordinates (selected atoms only when requested)
    box : ndarray (t, 3, 3) nm or None -- box vectors (None: no unit cell in the file)
    start : int -- index of the first frame of the chunk in the whole (strided) stream
    source : str -- file the chunk came from
    weights : ndarray (t,) or None
    """

    xyz: np.ndarray
    box: Optional[np.ndarray]
    start: int
    source: str
    weights: Optional[np.ndarray] = None


def _as_list(paths) -> List[str]:
    if isinstance(paths, (str, Path)):
        return [str(paths)]
    return [str(p) for p in paths]


def iter_trajectory(
    trajectories: Union[PathLike, Sequence[PathLike]],
    topology,
    atom_indices: Optional[Sequence[int]] = None,
    chunk_size: int = 10000,
    stride: int = 1,
    weights=None,
    check_finite: bool = True,
) -> Iterator[FrameChunk]:
    """Yield :class:`FrameChunk` blocks from one or several trajectory files.

    Parameters
    ----------
    trajectories : path or list of paths (DCD, XTC, ...)
    topology : path to a PDB (or other topology file), an ``mdtraj.Topology``, or an
        ``openmm.app.Topology``
    atom_indices : indices of the atoms to keep (into the full topology); all when None
    chunk_size : frames per chunk (before striding)
    stride : keep every ``stride``-th frame
    weights : array (n_frames,) over the concatenated, strided frames, optional
    check_finite : raise :class:`FeatureError` naming file and frame on NaN/inf
    """
    import mdtraj as md

    top = topology
    if isinstance(topology, (str, Path)):
        if not Path(topology).exists():
            raise FileNotFoundError(f"topology file not found: {topology}")
        top = md.load_topology(str(topology))
    elif not isinstance(topology, md.Topology):
        top = md.Topology.from_openmm(topology)
    files = _as_list(trajectories)
    for f in files:
        if not Path(f).exists():
            raise FileNotFoundError(f"trajectory file not found: {f}")
    idx = None if atom_indices is None else np.asarray(atom_indices, dtype=np.int64)
    if idx is not None and (idx.min() < 0 or idx.max() >= top.n_atoms):
        raise FeatureError(f"atom_indices out of range for a topology of {top.n_atoms} atoms: max {idx.max()}")
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    start = 0
    for f in files:
        for tr in md.iterload(f, top=top, chunk=int(chunk_size), stride=int(stride), atom_indices=idx):
            xyz = tr.xyz
            if check_finite:
                check_frames_finite(xyz, source=f"trajectory {f}", offset=start)
            box = None if tr.unitcell_vectors is None else np.asarray(tr.unitcell_vectors)
            cw = None
            if w is not None:
                if start + len(xyz) > len(w):
                    raise ValueError(f"weights has {len(w)} entries but the trajectories have more frames (reached {start + len(xyz)} in {f})")
                cw = w[start : start + len(xyz)]
            yield FrameChunk(xyz=xyz, box=box, start=start, source=f, weights=cw)
            start += len(xyz)
    if w is not None and start != len(w):
        raise ValueError(f"weights has {len(w)} entries but the trajectories have {start} frames (stride {stride})")


def load_frames(trajectories, topology, atom_indices=None, stride: int = 1) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """All frames at once (small data sets / tests): (xyz (T, n, 3), box (T, 3, 3) or None)."""
    xs, bs = [], []
    for c in iter_trajectory(trajectories, topology, atom_indices=atom_indices, stride=stride):
        xs.append(c.xyz)
        bs.append(c.box)
    xyz = np.concatenate(xs) if xs else np.zeros((0, 0, 3), np.float32)
    box = None if not bs or any(b is None for b in bs) else np.concatenate(bs)
    return xyz, box


def featurize_frames(featurizer: AlignedPositions, xyz, box=None, selected: bool = False, batch: int = 4096) -> Tensor:
    """Features (T, n_features) of in-memory frames, without gradients.

    ``selected=True`` when ``xyz`` holds only the selected atoms (in selection order);
    otherwise ``xyz`` is full-system coordinates and the featurizer picks its atoms.
    """
    arr = np.asarray(xyz)
    if arr.ndim == 2:
        arr = arr[None]
    check_frames_finite(arr, source="frames")
    if selected and arr.shape[1] != featurizer.n_atoms:
        raise FeatureError(f"frames have {arr.shape[1]} atoms but the selection has {featurizer.n_atoms}")
    dt = featurizer.dtype
    out = []
    with torch.no_grad():
        for s in range(0, arr.shape[0], batch):
            x = torch.as_tensor(arr[s : s + batch]).to(dt)
            B = x.shape[0]
            if box is None:
                b = torch.zeros(B, 3, 3, dtype=dt)
            else:
                bb = torch.as_tensor(np.asarray(box)).to(dt)
                b = bb.expand(B, 3, 3) if bb.dim() == 2 else bb[s : s + batch]
            if selected:
                out.append(featurizer.featurize_selected(x, b))
            else:
                out.append(featurizer(x, b))
    return torch.cat(out) if out else torch.zeros(0, featurizer.n_features, dtype=dt)


def featurize_trajectories(
    featurizer: AlignedPositions,
    trajectories,
    topology,
    weights=None,
    chunk_size: int = 10000,
    stride: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Stream trajectories and return (features (T, n_features), weights (T,) or None).

    Only the featurizer's atoms are read (``atom_indices`` passed to mdtraj), each chunk
    is featurised (standardisation as currently set in ``featurizer``) and converted to
    ``dtype`` (float32 default, what training uses).
    """
    feats, ws = [], []
    idx = featurizer.atom_indices.cpu().numpy()
    # readers return atoms in file order: read sorted, then restore the selection order
    order = np.argsort(idx, kind="stable")
    inverse = np.argsort(order)
    for c in iter_trajectory(trajectories, topology, atom_indices=idx[order], chunk_size=chunk_size, stride=stride, weights=weights):
        feats.append(featurize_frames(featurizer, c.xyz[:, inverse], c.box, selected=True).to(dtype))
        if c.weights is not None:
            ws.append(torch.as_tensor(c.weights, dtype=torch.float64))
    if not feats:
        raise FeatureError(f"no frames read from {_as_list(trajectories)}")
    return torch.cat(feats), (torch.cat(ws) if ws else None)
