"""Shared-bias multiple-walker eABF: walkers of one iteration exchange their lambda-grid accumulators via files.

Each walker ``j`` of ``n`` writes its own cumulative accumulators (the whole :class:`~aesample.eabf.EABFState`:
per lambda bin the sample count and the sum of ``kappa (lambda - xi)``) to ``<directory>/walker_<j>.npz`` at every
checkpoint (temp file + rename, so a reader sees the old file or the new one, never half of one). Before its next
segment it reads the latest files of the others and sums them; the bias it applies in a lambda bin is then that of
its own row plus those sums (:class:`~aesample.eabf.ExtendedABF` ``sharedState``). Nothing is exchanged as a
delta, so nothing is counted twice: a walker's file always holds everything that walker sampled, and each
walker adds the others' totals to its own exactly once. There are no locks: a slow or dead walker only
contributes less. Each walker keeps its own accumulators to itself (its CZAR estimate and the loop's pooling of
walkers at the end of the iteration are unchanged).

How often: once per MD segment, when the walker checkpoints; in the loop a shared walker's segments are
``loop.share_interval`` steps long (at most ``md.segment_steps``, :func:`aesample.loopstages.share_segment_steps`).
Applying new sums rebuilds the eABF force and the OpenMM Context from the checkpoint just written (on the
Reference/CPU platforms a fraction of a second for small systems, more where Context creation is slow, e.g.
CUDA); choose the interval so that the MD between exchanges takes much longer than that. The sums applied in
the next segment are saved with the checkpoint, so a walker resumed from it applies the same ones: a resume
reproduces what the uninterrupted walker would have done with what it had read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .eabf import EABFError, EABFState

__all__ = ["SharedBias", "shared_bias_file"]


def shared_bias_file(directory: Path, walker: int) -> Path:
    """``<directory>/walker_<walker>.npz``: the accumulators walker ``walker`` publishes."""
    return Path(directory) / f"walker_{int(walker)}.npz"


class SharedBias:
    """The file exchange of walker ``walker`` among ``n_walkers`` walkers sharing ``directory``.

    Parameters
    ----------
    directory
        Folder shared by the walkers (created); in the loop ``iter_NNN/shared_bias``.
    walker
        This walker's index, 0 .. n_walkers - 1.
    n_walkers
        How many walkers share the bias.

    Raises
    ------
    ValueError
        If ``walker`` is not in 0 .. n_walkers - 1.
    """

    def __init__(self, directory: Path, walker: int, n_walkers: int):
        if not 0 <= int(walker) < int(n_walkers):
            raise ValueError(f"walker index {walker} is not in 0..{int(n_walkers) - 1}")
        self.directory = Path(directory)
        self.walker = int(walker)
        self.n_walkers = int(n_walkers)

    def publish(self, state: EABFState) -> None:
        """Write this walker's cumulative accumulators for the others (atomic)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state.save(shared_bias_file(self.directory, self.walker))

    def others(self) -> Optional[EABFState]:
        """The other walkers' latest accumulators summed (lambda grid; CZAR arrays summed too, unused), or None when
        none has written yet.

        Raises
        ------
        EABFError
            If a file cannot be read or lies on another grid (walkers of different runs in one folder).
        """
        states = []
        for j in range(self.n_walkers):
            path = shared_bias_file(self.directory, j)
            if j != self.walker and path.is_file():
                states.append(EABFState.load(path))
        if not states:
            return None
        try:
            return EABFState.pooled(states)
        except EABFError as exc:
            raise EABFError(f"{self.directory}: shared-bias files of different grids: {exc}") from None
