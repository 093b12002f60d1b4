"""The graph-safe eABF module (built for openmm-torch's CUDA graphs): no host synchronisation, same numbers."""
import math
import re

import numpy as np
import openmm
import pytest
import torch

from aesample import cvs
from aesample.eabf import ExtendedABF
from aesample.features import AlignedPositions
from aesample.models import AutoEncoder, ModelSpec
from aesample.platforms import _gpu_usable
from aesample.systems import build_system

from .learnedcv import make_learned_cv

REF = openmm.Platform.getPlatformByName("Reference")
# tensor -> host scalar conversions: each one is a device synchronisation that a CUDA graph cannot capture
_HOST_SYNC = re.compile(r"aten::(item|Bool|Int|Float|IntImplicit|FloatImplicit|ScalarImplicit)\b")


@pytest.fixture(scope="module")
def adp():
    return build_system("alanine-dipeptide")


@pytest.fixture(scope="module")
def learned_cv(adp, tmp_path_factory):
    """A CV of the loop's architecture on the loop's featurizer (random weights: the ops are what matter)."""
    return make_learned_cv(adp, tmp_path_factory.mktemp("cv") / "cv.pt")


def _build(adp, cv, graph_safe, smooth=False):
    from aesample.md import copy_system

    system = copy_system(adp.system)
    if hasattr(cv, "cv_dim"):
        e = ExtendedABF(system, cv, [-1.5] * 2, [1.5] * 2, 6, 3000.0, periodic=[False] * 2, positions=adp.positions,
                        fullSamples=20, czarBins=12, useCUDAGraphs=graph_safe, smoothBias=smooth)
    else:
        e = ExtendedABF(system, cv, [-math.pi] * 2, [math.pi] * 2, 12, 200.0, positions=adp.positions,
                        fullSamples=20, useCUDAGraphs=graph_safe, smoothBias=smooth)
    return system, e


@pytest.mark.parametrize("smooth", [True, False])
def test_graph_safe_module_has_no_host_synchronisation(adp, learned_cv, smooth):
    _, plain = _build(adp, learned_cv, False, smooth)
    _, safe = _build(adp, learned_cv, True, smooth)
    # the test can fail: the ordinary module switches to the read-out on the host
    assert _HOST_SYNC.search(str(plain.module.inlined_graph))
    found = sorted(set(_HOST_SYNC.findall(str(safe.module.inlined_graph))))
    assert found == [], f"host synchronisations in the graph-safe module: {found}"


@pytest.mark.parametrize("which", ["learned", "phi,psi"])
def test_graph_safe_module_runs_the_same_dynamics_and_reads_out_the_same_state(adp, learned_cv, which):
    """The binned bias (the graph-safe smooth bias lags one refresh interval: test_eabf_smooth)."""
    cv = learned_cv if which == "learned" else cvs.parse_cv_spec("phi,psi", adp.mdtraj_topology)
    runs = []
    for graph_safe in (False, True):
        system, e = _build(adp, cv, graph_safe)
        integ = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.002)
        integ.setRandomNumberSeed(3)
        ctx = openmm.Context(system, integ, REF)
        ctx.setPositions(e.extendPositions(adp.positions))
        ctx.setVelocitiesToTemperature(300.0, 3)
        states, info = [], []
        for _ in range(4):
            integ.step(60)
            info.append(np.concatenate(e.getInstantaneous(ctx)))
            states.append(e.getState(ctx))
        pos = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
        runs.append((np.asarray(pos), states, np.array(info)))
    (p0, s0, i0), (p1, s1, i1) = runs
    assert s0[-1].n_samples > 200 and s0[-1].count.sum() > 0  # it sampled and the bias acted
    np.testing.assert_array_equal(p0, p1)  # bit-identical trajectory on the Reference platform
    np.testing.assert_array_equal(i0, i1)
    for a, b in zip(s0, s1):
        for name in ("count", "grad", "zcount", "czar", "last"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.n_samples == b.n_samples


def test_cuda_graphs_auto_asks_for_graphs_only_where_capture_can_work(adp, learned_cv):
    from aesample.torchbinding import host_synchronisations, resolve_cuda_graphs

    # the default rotation (eigh) waits for the host on CUDA; the power-iteration rotation does not
    assert "linalg_eigh" in host_synchronisations(learned_cv)
    idx = np.asarray(adp.mdtraj_topology.select(adp.selection))
    power = AlignedPositions(idx, adp.positions[idx], periodic=False, rotation_solver="power")
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(40,), n_cv=2)).double()
    from aesample.export import build_cv_module

    power_cv = torch.jit.script(build_cv_module(power, model))
    assert host_synchronisations(power_cv) == []
    assert resolve_cuda_graphs("auto", "CUDA", power_cv)[0] is True
    assert resolve_cuda_graphs("auto", "CUDA", learned_cv) == (
        False, "no CUDA graphs: the CV synchronises with the host (linalg_eigh)")
    assert resolve_cuda_graphs("auto", "CPU", power_cv)[0] is False
    assert resolve_cuda_graphs("on", "CPU", learned_cv)[0] is True
    with pytest.raises(ValueError, match="eabf.cuda_graphs"):
        resolve_cuda_graphs("yes", "CUDA", power_cv)


@pytest.mark.gpu
@pytest.mark.parametrize("smooth", [False, True])
def test_cuda_graph_captured_eabf_matches_reference(adp, smooth):
    """On CUDA, the graph-captured force (power-rotation learned CV) gives the graph-safe module's forces on
    Reference, samples, and (smooth bias) solves for its potential inside the graph."""
    if not _gpu_usable("CUDA"):
        pytest.skip("no CUDA device")
    idx = np.asarray(adp.mdtraj_topology.select(adp.selection))
    feat = AlignedPositions(idx, adp.positions[idx], periodic=False, rotation_solver="power")
    torch.manual_seed(2)
    model = AutoEncoder(ModelSpec(n_features=3 * len(idx), hidden=(40,), n_cv=2)).double()
    from aesample.export import build_cv_module

    cv = torch.jit.script(build_cv_module(feat, model))
    forces = {}
    for name in ("Reference", "CUDA"):
        system, e = _build(adp, cv, True, smooth)
        props = {"Precision": "double"} if name == "CUDA" else {}
        integ = openmm.VerletIntegrator(0.001)
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName(name), props)
        e.setSampling(ctx, False)
        ctx.setPositions(e.extendPositions(adp.positions))
        for _ in range(3):  # past openmm-torch's graph warm-up
            f = ctx.getState(getForces=True, groups={e.forceGroup}).getForces(asNumpy=True)._value
        forces[name] = np.asarray(f)
        if name == "CUDA":
            e.setSampling(ctx, True)
            integ.step(50)
            st = e.getState(ctx)
            assert st.n_samples >= 50
            if smooth:
                assert np.all(np.isfinite(st.bias_potential)) and st.bias_solver[-1] > 0  # the solve advanced
    np.testing.assert_allclose(forces["CUDA"], forces["Reference"], rtol=1e-6, atol=1e-6)
