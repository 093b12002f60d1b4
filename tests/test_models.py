"""Autoencoder models: shapes, options, state_dict round trip, bad specs."""
import pytest
import torch

from aesample.models import AutoEncoder, ModelSpec, build_model


def test_seed_architecture_shapes():
    torch.manual_seed(0)
    m = build_model(24, hidden=(40,), n_cv=2, activation="tanh")
    sizes = [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert sizes == [(24, 40), (40, 2), (2, 40), (40, 24)]
    x = torch.randn(7, 24)
    assert m.encode(x).shape == (7, 2)
    assert m(x).shape == (7, 24)
    assert m.per_sample_loss(x).shape == (7,)
    # deterministic evaluation is the squared reconstruction error
    assert torch.allclose(m.per_sample_loss(x, train=False), (m(x) - x).pow(2).sum(-1))


def test_vae_cv_is_code_mean_and_kl_added():
    torch.manual_seed(0)
    m = build_model(10, hidden=(16, 8), n_cv=1, variational=True, beta=0.5)
    x = torch.randn(5, 10)
    mu = m.encode(x)
    assert mu.shape == (5, 1)
    # encode is deterministic (mean), training loss is stochastic but reproducible
    assert torch.equal(mu, m.encode(x))
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(m.per_sample_loss(x, g1), m.per_sample_loss(x, g2))
    rec = (m.decode(mu) - x).pow(2).sum(-1)
    assert torch.all(m.per_sample_loss(x, train=False) >= rec - 1e-6)


def test_denoising_and_sparse_terms():
    torch.manual_seed(0)
    plain = build_model(6, hidden=(5,), n_cv=1)
    sparse = build_model(6, hidden=(5,), n_cv=1, l1_code=2.0)
    sparse.load_state_dict(plain.state_dict())
    x = torch.randn(4, 6)
    extra = sparse.per_sample_loss(x, train=False) - plain.per_sample_loss(x, train=False)
    assert torch.allclose(extra, 2.0 * plain.encode(x).abs().sum(-1), atol=1e-6)
    noisy = build_model(6, hidden=(5,), n_cv=1, noise_std=0.5)
    noisy.load_state_dict(plain.state_dict())
    assert not torch.allclose(noisy.per_sample_loss(x, torch.Generator().manual_seed(0)), plain.per_sample_loss(x, train=False))
    assert torch.allclose(noisy.per_sample_loss(x, train=False), plain.per_sample_loss(x, train=False))


def test_state_dict_round_trip_and_scriptable_encoder():
    torch.manual_seed(1)
    a = build_model(12, hidden=(8,), n_cv=2, activation="elu")
    b = AutoEncoder(ModelSpec.from_dict(a.spec.to_dict()))
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 12)
    assert torch.equal(a(x), b(x))
    enc = torch.jit.script(a.cv_encoder())
    assert torch.allclose(enc(x), a.encode(x))


@pytest.mark.parametrize(
    "kwargs,msg",
    [({"activation": "swishy"}, "unknown activation 'swishy'"), ({"n_cv": 0}, "n_cv must be >= 1"), ({"noise_std": -1.0}, "noise_std must be >= 0")],
)
def test_bad_spec(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ModelSpec(n_features=4, **kwargs)
