"""Contract tests for every registered aggregator and classifier, built through the registry."""
from __future__ import annotations

import copy

import pytest
import torch

import ser_plugins
from ser_plugins import PluginError, list_plugins
from ser_plugins.plugins.registry import check_kwargs
from ser_plugins.testing import check_aggregator, check_classifier

AGGREGATORS = sorted({s.name for s in list_plugins("aggregator")})
CLASSIFIERS = sorted({s.name for s in list_plugins("classifier")})
BUILTIN_AGGREGATORS = {"mean", "stats", "attentive_stats", "self_attention"}
D = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed: int = 0, lengths=(7, 3, 1), pad_value: float = float("nan")):
    """Features ``[B, T, D]`` whose padded frames hold ``pad_value``, and their lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    feats = torch.randn(len(lengths), int(lengths.max()) + 2, D, generator=gen)
    for i, n in enumerate(lengths.tolist()):
        feats[i, n:] = pad_value
    return feats, lengths


def _changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# --- aggregators ------------------------------------------------------------------------------

def test_builtin_aggregators_are_registered():
    assert BUILTIN_AGGREGATORS <= set(AGGREGATORS)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregators_keep_the_plugin_contract(name):
    """The checker third parties run: declared size, padding invariance, gradients, uses_only_mean, ..."""
    report = check_aggregator(name, input_dim=D)
    assert {"output", "padding_invariance", "uses_only_mean", "deterministic"} <= set(report)
    assert any(r.startswith("gradients") for r in report)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("mean", {}, D),
        ("stats", {}, 2 * D),
        ("attentive_stats", {}, 2 * D),
        ("attentive_stats", {"hidden_dim": 4}, 2 * D),
        ("self_attention", {}, 4 * D),
        ("self_attention", {"num_heads": 2}, 2 * D),
        ("self_attention", {"concat": False}, D),
    ],
)
def test_aggregator_output_dims(name, kwargs, expected):
    agg = ser_plugins.create_aggregator(name, input_dim=D, **kwargs)
    assert agg.output_dim == expected
    assert agg(*_batch()).shape == (3, expected)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_padding_never_changes_the_pooled_vector(name):
    agg = ser_plugins.create_aggregator(name, input_dim=D).eval()
    for pad_value in (0.0, 1e6, float("nan"), float("inf")):
        feats, lengths = _batch(pad_value=pad_value)
        batched = agg(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = agg(feats[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0, msg=f"pad {pad_value}")


@pytest.mark.parametrize("name", sorted(BUILTIN_AGGREGATORS))
def test_only_mean_pooling_uses_only_the_mean(name):
    assert ser_plugins.create_aggregator(name, input_dim=D).uses_only_mean == (name == "mean")


@pytest.mark.parametrize("name", AGGREGATORS)
def test_trainable_aggregators_learn(name):
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator(name, input_dim=D)
    params = list(agg.parameters())
    if not params:
        assert name in {"mean", "stats"}, f"{name} was expected to have trainable parameters"
        return
    feats, lengths = _batch(seed=1, lengths=(6, 4, 5, 2), pad_value=0.0)
    target = torch.randn(4, agg.output_dim, generator=torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=0.05)

    def loss_fn():
        return (agg(feats, lengths) - target).pow(2).mean()

    def eval_loss():  # training-time randomness (frame dropout) off
        agg.eval()
        with torch.no_grad():
            loss = loss_fn().item()
        agg.train()
        return loss

    first = eval_loss()
    for _ in range(15):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert _changed(before, agg)
    assert eval_loss() < first


def test_stats_pooling_values():
    agg = ser_plugins.create_aggregator("stats", input_dim=D, eps=1e-12)
    feats, lengths = _batch()
    out = agg(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        valid = feats[i, :n]
        expected = torch.cat([valid.mean(0), valid.std(0, unbiased=False)])
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


def test_mean_pooling_values():
    feats, lengths = _batch()
    out = ser_plugins.create_aggregator("mean", input_dim=D)(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[i], feats[i, :n].mean(0))


def test_attentive_stats_with_uniform_attention_is_stats_pooling():
    agg = ser_plugins.create_aggregator("attentive_stats", input_dim=D).eval()
    with torch.no_grad():
        for p in agg.scorer[-1].parameters():
            p.zero_()  # every frame scores 0 -> uniform weights
    feats, lengths = _batch()
    expected = ser_plugins.create_aggregator("stats", input_dim=D)(feats, lengths)
    torch.testing.assert_close(agg(feats, lengths), expected)


def test_self_attention_weights_and_uniform_heads():
    agg = ser_plugins.create_aggregator("self_attention", input_dim=D, num_heads=3).eval()
    feats, lengths = _batch()
    weights = agg.attention(feats, lengths)
    assert weights.shape == (3, feats.shape[1], 3)
    torch.testing.assert_close(weights.sum(1), torch.ones(3, 3))
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(weights[i, n:] == 0)
    with torch.no_grad():
        agg.queries.weight.zero_()  # uniform attention: every head is the mean
    mean = ser_plugins.create_aggregator("mean", input_dim=D)(feats, lengths)
    torch.testing.assert_close(agg(feats, lengths), mean.repeat(1, 3))
    agg.concat = False
    torch.testing.assert_close(agg(feats, lengths), mean)


@pytest.mark.parametrize("name, plain", [("attentive_stats", "stats"), ("self_attention", "mean")])
def test_attention_pooling_starts_as_plain_pooling(name, plain):
    torch.manual_seed(3)
    agg = ser_plugins.create_aggregator(name, input_dim=D).eval()
    feats, lengths = _batch()
    expected = ser_plugins.create_aggregator(plain, input_dim=D)(feats, lengths)
    out = agg(feats, lengths)
    torch.testing.assert_close(out, expected.repeat(1, out.shape[1] // expected.shape[1]))


@pytest.mark.parametrize("name", ["attentive_stats", "self_attention"])
def test_frame_dropout_hides_frames_in_training_only(name):
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator(name, input_dim=D, frame_dropout=0.9)
    with torch.no_grad():  # a scorer that is not uniform, so hidden frames would change the result
        for p in agg.parameters():
            p.normal_()
    feats, lengths = _batch(lengths=(7, 3, 1, 5), pad_value=0.0)
    agg.eval()
    first = agg(feats, lengths)
    torch.testing.assert_close(agg(feats, lengths), first)  # eval: every frame, deterministic
    agg.train()
    outs = [agg(feats, lengths) for _ in range(5)]
    assert all(torch.isfinite(o).all() for o in outs)  # at least one frame always kept
    assert any(not torch.allclose(o, first) for o in outs)
    torch.testing.assert_close(outs[0][2], first[2])  # a one-frame utterance keeps its frame


def test_drop_frames_keeps_one_valid_frame_per_row():
    from downstreams.aggregators import drop_frames

    torch.manual_seed(0)
    mask = torch.tensor([[True] * 6 + [False] * 2, [True] + [False] * 7])
    for _ in range(50):
        kept = drop_frames(mask, 0.95)
        assert (kept & ~mask).sum() == 0 and kept.any(1).all()


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregators_reject_bad_input_dim_and_lengths(name):
    with pytest.raises(ValueError, match="input_dim must be a positive integer"):
        ser_plugins.create_aggregator(name, input_dim=0)
    agg = ser_plugins.create_aggregator(name, input_dim=D)
    feats, _ = _batch()
    with pytest.raises(ValueError, match="lengths must be between 1 and"):
        agg(feats, torch.tensor([3, 0, 2]))
    with pytest.raises(ValueError, match="lengths must be between 1 and"):
        agg(feats, torch.tensor([3, feats.shape[1] + 1, 2]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        agg(feats, torch.tensor([3, 2]))
    with pytest.raises(ValueError, match=r"\[batch, frames, dim\]"):
        agg(feats[0], torch.tensor([3]))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("stats", {"eps": 0.0}, "eps must be positive"),
        ("attentive_stats", {"hidden_dim": 0}, "hidden_dim must be a positive integer"),
        ("self_attention", {"num_heads": 0}, "num_heads must be a positive integer"),
        ("self_attention", {"hidden_dim": -1}, "hidden_dim must be a positive integer"),
        ("attentive_stats", {"frame_dropout": 1.0}, r"frame_dropout must be in \[0, 1\)"),
        ("self_attention", {"frame_dropout": -0.1}, r"frame_dropout must be in \[0, 1\)"),
    ],
)
def test_bad_aggregator_options_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ser_plugins.create_aggregator(name, input_dim=D, **kwargs)


def test_misspelt_option_is_named():
    with pytest.raises(PluginError, match="did you mean 'num_heads'"):
        check_kwargs("aggregator", "self_attention", {"num_head": 2}, reserved=("input_dim",))


# --- classifiers ------------------------------------------------------------------------------

def test_builtin_classifiers_are_registered():
    assert {"linear", "mlp"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_keep_the_plugin_contract(name):
    assert {"output", "deterministic", "gradients"} <= set(check_classifier(name, input_dim=D, num_classes=5))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_output_shape(name):
    clf = ser_plugins.create_classifier(name, D, 5).eval()
    x = torch.randn(3, D)
    logits = clf(x)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(clf(x), logits)  # eval mode is deterministic (no dropout)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_learn_a_tiny_batch(name):
    torch.manual_seed(0)
    clf = ser_plugins.create_classifier(name, D, 4)
    x = torch.randn(8, D)
    y = torch.arange(8) % 4
    before = [p.detach().clone() for p in clf.parameters()]
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)

    def eval_loss():
        clf.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(clf(x), y).item()

    first = eval_loss()
    clf.train()
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    assert _changed(before, clf)
    assert eval_loss() < 0.5 * first


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "leaky_relu", "silu"])
def test_mlp_activations_and_norms(activation, norm):
    clf = ser_plugins.create_classifier("mlp", D, 3, hidden_sizes=[6, 5], activation=activation, norm=norm)
    assert clf(torch.randn(4, D)).shape == (4, 3)
    linears = [m for m in clf.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(D, 6), (6, 5), (5, 3)]


def test_mlp_without_hidden_layers_is_linear():
    clf = ser_plugins.create_classifier("mlp", D, 3, hidden_sizes=[])
    assert [type(m).__name__ for m in clf.net] == ["Linear"]
    assert ser_plugins.create_classifier("mlp", D, 3, hidden_sizes=7)(torch.randn(2, D)).shape == (2, 3)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("mlp", {"activation": "swish"}, "relu, gelu, tanh, leaky_relu, silu"),
        ("mlp", {"norm": "group"}, "choose None or one of: batch, layer"),
        ("mlp", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("mlp", {"hidden_sizes": [16, 0]}, "hidden_sizes must be positive"),
        ("linear", {"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_classifier_options_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ser_plugins.create_classifier(name, D, 3, **kwargs)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_reject_bad_sizes(name):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        ser_plugins.create_classifier(name, D, 0)
    with pytest.raises(ValueError, match="input_dim must be a positive integer"):
        ser_plugins.create_classifier(name, 0, 3)


# --- composition ------------------------------------------------------------------------------

def test_fbank_stats_mlp_compose_and_train():
    torch.manual_seed(0)
    up = ser_plugins.create_upstream("fbank", n_mels=16, normalize="utterance")
    agg = ser_plugins.create_aggregator("attentive_stats", input_dim=up.hidden_size, hidden_dim=8)
    clf = ser_plugins.create_classifier("mlp", agg.output_dim, 2, hidden_sizes=(8,), dropout=0.0)
    wavs = torch.randn(2, 1600) * 0.1
    out = up(wavs, torch.tensor([1600, 900]))
    model = torch.nn.ModuleList([agg, clf])
    snapshot = copy.deepcopy(model.state_dict())
    logits = clf(agg(out.hidden_states[0], out.lengths))
    assert logits.shape == (2, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
