"""alfm.probe and alfm.classifiers: architecture, training, early stopping, inference helpers,
determinism, errors; the residual adapter against a hand evaluation of its formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import alfm.probe as probe_module
from alfm.classifiers import ResidualMLP, list_classifiers
from alfm.cli import main
from alfm.probe import (
    DROPOUT_STREAMS,
    Probe,
    ProbeConfig,
    bit_fields,
    build_probe,
    dropout_scale,
    keep_mask,
    stacked_dropout_scales,
    train_probe,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n: int, d: int = 16, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    centers = torch.randn(c, d, generator=gen(100)) * 3
    labels = torch.randint(c, (n,), generator=g)
    return centers[labels] + torch.randn(n, d, generator=g), labels


@pytest.fixture(scope="module")
def trained() -> tuple[Probe, torch.Tensor, torch.Tensor]:
    x, y = blobs(300)
    return train_probe(x, y, 4, ProbeConfig(), gen(1)), x, y


def test_architecture_and_eval_mode(trained):
    probe, _, _ = trained
    assert not probe.training
    assert probe.norm.affine is False and probe.dropout == 0.75
    assert probe.linear.in_features == 16 and probe.num_classes == 4


def test_learns_separable_classes(trained):
    probe, _, _ = trained
    x_test, y_test = blobs(500, seed=7)
    accuracy = (probe.predict_proba(x_test).argmax(dim=1) == y_test).float().mean()
    assert accuracy > 0.95


def test_same_generator_same_weights():
    x, y = blobs(120)
    a = train_probe(x, y, 4, ProbeConfig(max_epochs=30), gen(3))
    b = train_probe(x, y, 4, ProbeConfig(max_epochs=30), gen(3))
    c = train_probe(x, y, 4, ProbeConfig(max_epochs=30), gen(4))
    assert torch.equal(a.linear.weight, b.linear.weight)
    assert torch.equal(a.norm.running_var, b.norm.running_var)
    assert not torch.equal(a.linear.weight, c.linear.weight)


def test_inference_helpers_agree(trained):
    probe, _, _ = trained
    x = torch.randn(50, 16, generator=gen(5))
    z = probe.embed(x)
    expected_z = (x - probe.norm.running_mean) / (probe.norm.running_var + probe.norm.eps).sqrt()
    assert torch.allclose(z, expected_z, atol=1e-6)
    logits = probe.logits(x)
    assert torch.allclose(logits, F.linear(z, probe.linear.weight, probe.linear.bias), atol=1e-5)
    assert torch.allclose(logits, probe(x), atol=1e-5)  # eval-mode forward: no dropout
    proba = probe.predict_proba(x)
    assert torch.allclose(proba.sum(dim=1), torch.ones(50)) and proba.dtype == torch.float32
    assert torch.allclose(probe.predict_proba(x.half()), probe.predict_proba(x.half().float()))


def test_dropout_logits(trained):
    probe, _, _ = trained
    x = torch.randn(40, 16, generator=gen(6))
    a = probe.dropout_logits(x, gen(9))
    assert torch.equal(a, probe.dropout_logits(x, gen(9)))
    assert not torch.allclose(a, probe.logits(x))
    assert torch.allclose(probe.dropout_logits(x, gen(9), p=0.0), probe.logits(x))
    with pytest.raises(ValueError, match="dropout rate"):
        probe.dropout_logits(x, gen(), p=1.0)


def test_dropout_pass_is_inverted_dropout_of_the_input(trained):
    probe, _, _ = trained
    x = torch.randn(30, 16, generator=gen(6))
    keep = keep_mask((30, 16), 0.75, gen(2), torch.device("cpu"))
    expected = probe.logits(x * keep / 0.25)
    assert torch.allclose(probe.dropout_logits(x, gen(2)), expected, atol=1e-5)


def test_map_dropout_passes_streams(trained, monkeypatch):
    """Many blocks: up to DROPOUT_STREAMS streams, each a contiguous run of blocks with a
    generator seeded (in order) from the caller's; the same result on 1 or 2 threads and with
    the streams run one after the other."""
    probe, x, _ = trained
    monkeypatch.setattr(probe_module, "CPU_CACHE_BYTES", 4 * 16 * 5 * 7)  # 7 rows per block
    monkeypatch.setattr(probe_module, "THREADED_PASS_ENTRIES", 0)  # threads even for this pool
    rows = probe_module.dropout_pass_rows(5, 16)
    out = probe.map_dropout_passes(
        x, 5, gen(2), lambda xb, lg: lg.sum(dim=(0, 2)), torch.empty(300)
    )
    blocks = -(-300 // rows)
    seeds = torch.randint(0, 2**62, (DROPOUT_STREAMS,), generator=gen(2)).tolist()
    bounds = [rows * (blocks * i // DROPOUT_STREAMS) for i in range(DROPOUT_STREAMS)] + [300]
    expected = []
    for i, seed in enumerate(seeds):
        g = gen(seed)
        for start in range(bounds[i], bounds[i + 1], rows):
            xb = x[start : min(bounds[i + 1], start + rows)]
            expected.append(probe.dropout_pass_logits(xb, 5, g).sum(dim=(0, 2)))
    assert torch.allclose(out, torch.cat(expected), atol=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = probe.map_dropout_passes(
            x, 5, gen(2), lambda xb, lg: lg.sum(dim=(0, 2)), torch.empty(300)
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, single)
    monkeypatch.setattr(probe_module, "THREADED_PASS_ENTRIES", 2**62)
    sequential = probe.map_dropout_passes(
        x, 5, gen(2), lambda xb, lg: lg.sum(dim=(0, 2)), torch.empty(300)
    )
    assert torch.equal(out, sequential)


def test_map_dropout_passes_reraises_and_restores_threads(trained, monkeypatch):
    probe, x, _ = trained
    monkeypatch.setattr(probe_module, "CPU_CACHE_BYTES", 4 * 16 * 5 * 7)
    monkeypatch.setattr(probe_module, "THREADED_PASS_ENTRIES", 0)
    threads = torch.get_num_threads()

    def failing(xb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise ValueError("block failed")

    with pytest.raises(ValueError, match="block failed"):
        probe.map_dropout_passes(x, 5, gen(), failing, torch.empty(300))
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.75, 0.9])
def test_keep_mask_rate(rate):
    mask = keep_mask((1000, 1001), rate, gen(3), torch.device("cpu"))
    assert mask.shape == (1000, 1001) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - (1 - rate)) < 3e-3
    assert torch.equal(mask, keep_mask((1000, 1001), rate, gen(3), torch.device("cpu")))
    if rate == 0.0:
        assert mask.all()


@pytest.mark.parametrize("rate", [0.75, 0.5, 0.25 + 1 / 16, 0.3])
def test_dropout_scale_table_equals_elementwise_fields(rate):
    """The CPU lookup table and the elementwise bit fields (the CUDA path) agree entry by entry."""
    scales = dropout_scale((123, 45), rate, gen(5), torch.device("cpu"))
    bits = next((b for b in (1, 2, 4, 8) if (rate * 2**b).is_integer()), 16)
    words = torch.randint(-(2**63), 2**63 - 1, (-(-123 * 45 // (64 // bits)),), generator=gen(5))
    if bits == 16:
        keep = words.view(torch.int16) >= round(rate * 2**16) - 2**15
    else:
        keep = bit_fields(words.view(torch.uint8), bits) >= round(rate * 2**bits)
    expected = keep.float().view(-1)[: 123 * 45].view(123, 45) / (1 - rate)
    assert torch.equal(scales, expected)


@pytest.mark.parametrize("rate", [0.75, 0.5, 0.3])
def test_keep_mask_entries_are_independent(rate):
    """Entries packed into one random byte or word are neither correlated nor position-biased."""
    flat = keep_mask((1_000_000,), rate, gen(4), torch.device("cpu")).float()
    keep = 1 - rate
    for position in range(8):  # entries sharing a byte sit at positions mod 4 (2-bit fields)
        assert abs(flat[position::8].mean().item() - keep) < 5e-3
    for lag in (1, 2, 3, 4, 5, 32):
        both = (flat[:-lag] * flat[lag:]).mean().item()
        assert abs(both - keep**2) < 3e-3


def test_early_stopping_and_best_epoch():
    x, y = blobs(80)
    # min_delta so large that only the first epoch counts as an improvement: 1 + patience epochs.
    probe = train_probe(x, y, 4, ProbeConfig(patience=3, min_delta=1e9), gen())
    assert len(probe.loss_history) == 4
    assert probe.best_epoch == 1 + min(range(4), key=probe.loss_history.__getitem__)
    full = train_probe(x, y, 4, ProbeConfig(max_epochs=7, patience=100), gen())
    assert len(full.loss_history) == 7


def test_minibatches_when_larger_than_batch_size():
    x, y = blobs(100)
    probe = train_probe(x, y, 4, ProbeConfig(batch_size=33, max_epochs=50), gen())  # 4 batches
    x_test, y_test = blobs(300, seed=3)
    assert (probe.predict_proba(x_test).argmax(1) == y_test).float().mean() > 0.9


def test_single_sample_and_missing_classes():
    x, y = blobs(40)
    one = train_probe(x[:1], y[:1], 10, ProbeConfig(max_epochs=20), gen())
    proba = one.predict_proba(x)
    assert proba.shape == (40, 10) and torch.isfinite(proba).all()
    assert proba[0].argmax() == y[0]
    assert torch.equal(one.norm.running_var, torch.ones(16))  # BatchNorm stays identity


def test_float16_features_train():
    x, y = blobs(100)
    probe = train_probe(x.half(), y, 4, ProbeConfig(max_epochs=50), gen())
    assert probe.linear.weight.dtype == torch.float32 and math.isfinite(probe.loss_history[-1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dropout": 1.0}, r"probe.dropout must be a number >= 0 and < 1, got 1.0"),
        ({"max_epochs": 0}, r"probe.max_epochs must be an integer >= 1, got 0"),
        ({"max_epochs": 2.5}, r"probe.max_epochs must be an integer >= 1, got 2.5"),
        ({"batch_size": 1}, r"probe.batch_size must be an integer >= 2, got 1"),
        ({"patience": 0}, r"probe.patience must be an integer >= 1"),
        ({"lr": -1.0}, r"probe.lr must be a number > 0, got -1.0"),
        ({"lr": 0}, r"probe.lr must be a number > 0, got 0"),
        ({"weight_decay": "0.1"}, r"probe.weight_decay must be a number >= 0, got '0.1'"),
        ({"dropout": True}, r"probe.dropout must be a number"),
        ({"classifier": "residual_adaptor"}, r"probe.classifier: .*'residual_adapter'"),
        ({"scale": 2}, r"probe.scale has no effect with classifier 'linear'"),
        ({"init_alpha": 0.0}, r"probe.init_alpha has no effect with classifier 'linear'"),
        ({"classifier": "residual_adapter", "scale": 0}, r"probe.scale must be an integer >= 1"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProbeConfig(**kwargs)


def test_integer_floats_are_accepted():
    assert ProbeConfig(lr=1, dropout=0).lr == 1


def test_bad_training_inputs():
    x, y = blobs(20)
    with pytest.raises(ValueError, match="labels must lie"):
        train_probe(x, y + 4, 4)
    with pytest.raises(ValueError, match="labels must have shape"):
        train_probe(x, y[:5], 4)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_probe(bad, y, 4)
    with pytest.raises(ValueError, match="non-empty"):
        train_probe(x[:0], y[:0], 4)


def gelu(v: float) -> float:
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def hand_adapter() -> Probe:
    """A residual-adapter probe (D = 4, scale 2, 3 classes) with hand-set weights and stats."""
    probe = build_probe(4, 3, ProbeConfig(classifier="residual_adapter", scale=2, init_alpha=-1.5))
    first, second = probe.adapter.mlp[0], probe.adapter.mlp[2]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 0.5, 0.0, 2.0]]))
        first.bias.copy_(torch.tensor([0.5, -1.0]))
        second.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 1.0], [0.0, 0.0]]))
        second.bias.copy_(torch.tensor([0.0, 0.25, -0.5, 1.0]))
        probe.norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        probe.norm.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 2.0]))
        probe.linear.weight.copy_(torch.tensor([[1.0, 0, 0, 1], [0, 1, -1, 0], [0.5, 0, 0, 0]]))
        probe.linear.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    return probe.eval()


def test_residual_adapter_forward_by_hand():
    """x = (1, −2, 0.5, 3): every step of the formula evaluated with scalars."""
    probe = hand_adapter()
    x = [1.0, -2.0, 0.5, 3.0]
    h = [gelu(1.0 - 0.5 + 0.5), gelu(-1.0 + 6.0 - 1.0)]  # GELU(W1 x + b1)
    mlp = [gelu(h[0]), gelu(-h[1] + 0.25), gelu(2 * h[0] + h[1] - 0.5), gelu(1.0)]
    a = sigmoid(-1.5)
    mixed = [a * m + (1 - a) * xi for m, xi in zip(mlp, x, strict=True)]
    eps = probe.norm.eps
    mean, var = [0.1, -0.2, 0.0, 0.3], [1.0, 4.0, 0.25, 2.0]
    z = [(v - m) / math.sqrt(s + eps) for v, m, s in zip(mixed, mean, var, strict=True)]
    logits = [z[0] + z[3], 1.0 + z[1] - z[2], -1.0 + 0.5 * z[0]]
    xt = torch.tensor([x])
    assert torch.allclose(probe.adapt(xt), torch.tensor([mixed]), atol=1e-6)
    assert torch.allclose(probe.embed(xt), torch.tensor([z]), atol=1e-6)
    assert torch.allclose(probe.logits(xt), torch.tensor([logits]), atol=1e-5)
    assert torch.allclose(probe(xt), torch.tensor([logits]), atol=1e-5)
    assert probe.adapter.alpha.item() == -1.5 and probe.adapter.mlp[0].out_features == 2


def test_residual_adapter_inference_helpers_agree():
    """z precedes the last Linear; dropout passes drop the input, before the adapter."""
    probe = hand_adapter()
    x = torch.randn(30, 4, generator=gen(6))
    z = probe.embed(x)
    assert torch.allclose(probe.logits(x), probe.linear(z), atol=1e-5)
    keep = keep_mask((30, 4), 0.75, gen(2), torch.device("cpu"))
    expected = probe.logits(x * keep / 0.25)
    assert torch.allclose(probe.dropout_logits(x, gen(2)), expected, atol=1e-5)
    assert torch.allclose(probe.embed(x, rows=torch.tensor([3, 1])), z[[3, 1]])
    scales = stacked_dropout_scales(3, 30, 4, 0.75, gen(4), torch.device("cpu"))
    passes = torch.stack([probe.logits(x * scale) for scale in scales])
    assert torch.allclose(probe.dropout_pass_logits(x, 3, gen(4)), passes, atol=1e-5)
    no_dropout = probe.dropout_pass_logits(x, 2, gen(4), p=0.0)
    assert torch.allclose(no_dropout, probe.logits(x).expand(2, -1, -1), atol=1e-5)


def test_residual_adapter_trains_deterministically():
    x, y = blobs(300)
    config = ProbeConfig(classifier="residual_adapter")
    a, b = train_probe(x, y, 4, config, gen(1)), train_probe(x, y, 4, config, gen(1))
    assert isinstance(a.adapter, ResidualMLP) and a.adapter.mlp[0].out_features == 4
    assert a.adapter.alpha.item() != -2.0  # α is learned
    for (name, value), other in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(value, other), name
    x_test, y_test = blobs(500, seed=7)
    assert (a.predict_proba(x_test).argmax(dim=1) == y_test).float().mean() > 0.95
    restored = build_probe(16, 4, config)
    restored.load_state_dict(a.state_dict())
    assert torch.equal(restored.eval().logits(x_test), a.logits(x_test))


def test_weighted_cross_entropy():
    """Zero-weight rows do not train: their labels may be anything."""
    x, y = blobs(200)
    weights = (torch.arange(200) % 2).float()
    noisy = torch.where(weights > 0, y, (y + 1) % 4)
    weighted = train_probe(x, noisy, 4, ProbeConfig(max_epochs=30), gen(1), weights)
    x_test, y_test = blobs(300, seed=7)
    assert (weighted.predict_proba(x_test).argmax(dim=1) == y_test).float().mean() > 0.95
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        train_probe(x, y, 4, None, gen(), -weights)
    with pytest.raises(ValueError, match=r"weights must have shape \(200,\)"):
        train_probe(x, y, 4, None, gen(), weights[:5])


def test_adapter_settings_are_errors_with_the_linear_probe():
    with pytest.raises(ValueError, match="probe.scale has no effect with classifier 'linear'"):
        ProbeConfig.from_dict({"scale": 4})  # even at its default value
    assert ProbeConfig.from_dict({"classifier": "residual_adapter", "scale": 8}).scale == 8
    with pytest.raises(ValueError, match="leaves no hidden unit for 4 features"):
        build_probe(4, 2, ProbeConfig(classifier="residual_adapter", scale=8))


def test_list_classifiers(capsys):
    assert list_classifiers() == ["linear", "residual_adapter"]
    assert main(["list", "classifiers"]) == 0
    assert capsys.readouterr().out.split() == ["linear", "residual_adapter"]
