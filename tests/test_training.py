"""Weighted training: loss definition, reproducibility, learning a 1D manifold, scaling, curves."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from aesample.models import ModelSpec, build_model
from aesample.training import (
    CVScaling,
    TrainingOptions,
    fit_autoencoder,
    fit_cv_scaling,
    save_history,
    train_autoencoder,
    weighted_loss,
    weighted_quantile,
)


def test_weighted_loss_equals_duplicated_unweighted():
    torch.manual_seed(0)
    model = build_model(5, hidden=(7,), n_cv=1)
    x = torch.randn(20, 5)
    w = torch.randint(0, 4, (20,))
    w[0] = 2
    dup = torch.repeat_interleave(x, w, dim=0)
    lw = weighted_loss(model, x, w)
    lu = weighted_loss(model, dup)
    assert lw.item() == pytest.approx(lu.item(), rel=1e-6)
    # and it is the mean squared reconstruction error for uniform weights
    assert weighted_loss(model, x).item() == pytest.approx((model(x) - x).pow(2).sum(-1).mean().item(), rel=1e-6)


def curve_data(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 1.0, n)
    s = 2.5 * t
    # a helix-like open curve in 3D (not a straight line, no self-intersection)
    x = np.stack([np.cos(s), np.sin(s), 0.8 * s], 1) + rng.normal(scale=0.03, size=(n, 3))
    return t, x.astype(np.float32)


def test_learns_1d_curve_monotone_bottleneck():
    t, x = curve_data()
    x = (x - x.mean(0)) / x.std(0)
    opts = TrainingOptions(seed=0, batch_size=64, learning_rate=5e-3, max_epochs=60, patience=8)
    res = fit_autoencoder(x, spec=ModelSpec(n_features=3, hidden=(32,), n_cv=1), options=opts)
    with torch.no_grad():
        z = res.model.encode(torch.as_tensor(x)).numpy()[:, 0]
    rho = spearmanr(z, t).correlation
    assert abs(rho) > 0.95, rho
    assert res.history["best_epoch"] >= 0 and len(res.history["val_loss"]) == res.history["epochs"]
    # restored weights are the best ones
    assert res.best_val_loss == pytest.approx(min(res.history["val_loss"]), rel=1e-5)


def test_same_seed_identical_weights_and_warm_start():
    _, x = curve_data(600, seed=1)
    opts = TrainingOptions(seed=7, batch_size=64, max_epochs=5, patience=5)
    w = np.random.default_rng(0).uniform(0.1, 2.0, len(x))
    a = fit_autoencoder(x, w, options=opts)
    b = fit_autoencoder(x, w, options=opts)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = fit_autoencoder(x, w, options=TrainingOptions(seed=8, batch_size=64, max_epochs=5, patience=5))
    assert not torch.equal(a.model.encoder[0].weight, c.model.encoder[0].weight)
    # warm start: starting from a trained model gives a lower first-epoch validation loss
    torch.manual_seed(123)
    fresh = build_model(3, hidden=(40,), n_cv=2)
    warm = train_autoencoder(fresh, x, w, TrainingOptions(seed=9, batch_size=64, max_epochs=1, patience=1), warm_start=a.model.state_dict())
    torch.manual_seed(123)
    cold = train_autoencoder(build_model(3, hidden=(40,), n_cv=2), x, w, TrainingOptions(seed=9, batch_size=64, max_epochs=1, patience=1))
    assert warm.history["val_loss"][0] < cold.history["val_loss"][0]


def test_variational_denoising_sparse_train():
    _, x = curve_data(800, seed=2)
    from aesample.models import ModelSpec

    for spec in [
        ModelSpec(3, hidden=(16,), n_cv=1, variational=True, beta=1e-3),
        ModelSpec(3, hidden=(16,), n_cv=1, noise_std=0.05),
        ModelSpec(3, hidden=(16,), n_cv=1, l1_code=1e-3),
    ]:
        res = fit_autoencoder(x, spec=spec, options=TrainingOptions(seed=0, max_epochs=10, batch_size=64))
        assert np.isfinite(res.best_val_loss)
        assert res.history["val_loss"][-1] < res.history["val_loss"][0] * 1.5


def test_cv_scaling_maps_weighted_range():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 2)) * [3.0, 0.1] + [5.0, -1.0]
    w = rng.uniform(0, 1, 500)
    w[:10] = 0.0
    sc = fit_cv_scaling(z, w)
    xi = sc.apply(z[w > 0])
    assert np.allclose(xi.min(0), -1.0) and np.allclose(xi.max(0), 1.0)
    sc_q = fit_cv_scaling(z, w, target_range=(0.0, 1.0), quantile=0.01)
    xi_q = sc_q.apply(z)
    inside = ((xi_q >= 0) & (xi_q <= 1)).all(1)
    assert 0.9 < np.average(inside, weights=w) < 1.0
    assert CVScaling.from_dict(sc.to_dict()) == sc
    with pytest.raises(ValueError, match="CV component 1 is constant"):
        fit_cv_scaling(np.stack([z[:, 0], np.ones(500)], 1))
    assert weighted_quantile([1, 2, 3], [0, 1, 0], [0.0, 0.5, 1.0]).tolist() == [2.0, 2.0, 2.0]


def test_history_saved(tmp_path):
    _, x = curve_data(300, seed=3)
    res = fit_autoencoder(x, options=TrainingOptions(seed=0, max_epochs=3, batch_size=64))
    paths = save_history(res.history, tmp_path / "loss")
    data = json.loads(paths["json"].read_text())
    assert data["val_loss"] == res.history["val_loss"]
    assert paths["csv"].read_text().splitlines()[0] == "epoch,train_loss,val_loss"
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_bad_training_input():
    with pytest.raises(ValueError, match="weights has 3 entries but there are 4 frames"):
        weighted_loss(build_model(2, hidden=(3,), n_cv=1), torch.zeros(4, 2), [1, 1, 1])
    x = np.zeros((10, 2), np.float32)
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values \\(first at frame 4\\)"):
        fit_autoencoder(x)


def test_sampling_weight_spreads_a_share_of_the_training_weight_over_the_frames():
    from aesample.loopstages import training_weights

    # reweighted frames of an eABF run: the barrier frames (last 40) carry almost no Boltzmann weight
    w = np.r_[np.full(60, 1.0), np.full(40, 1e-6)]
    w /= w.sum()
    assert training_weights(w, 0.0) is not None and np.array_equal(training_weights(w, 0.0), w)
    half = training_weights(w, 0.5)
    assert half.sum() == pytest.approx(1.0)
    assert half[60:].sum() == pytest.approx(0.5 * 0.4, rel=1e-4)  # half of the frames' own share
    ess = lambda x: 1.0 / np.sum((x / x.sum()) ** 2)  # noqa: E731
    assert ess(w) == pytest.approx(60, rel=1e-3) and ess(half) > 80 and ess(training_weights(w, 1.0)) == pytest.approx(100)
    with pytest.raises(ValueError, match="positive, finite sum"):
        training_weights(np.zeros(5), 0.5)
