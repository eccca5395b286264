"""Trainable frame-level heads (ecapa_tdnn, cnn_self_attention, bilstm_attention) and the cosine classifier.

The generic aggregator and classifier contracts (shapes, padding invariance with NaN/inf padding,
no gradient on padding, learning, bad input) run for these plugins in test_downstreams.py, which
is parametrised over every registered plugin. Here: what is specific to each network, and runs
through the real runner.
"""
from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

import ser_plugins
from downstreams.frame_layers import MaskedBatchNorm1d, WarmBatchNorm1d, masked_time_pool, warm_momentum

FRAME_HEADS = ("ecapa_tdnn", "cnn_self_attention", "bilstm_attention")
#: small sizes for fast tests (every option below is a real constructor option)
SMALL = {
    "ecapa_tdnn": {"channels": 16, "scale": 4, "embedding_dim": 12, "se_channels": 8, "attention_channels": 8},
    "cnn_self_attention": {"hidden_dim": 12, "pool": 3, "dropout": 0.0},
    "bilstm_attention": {"hidden_size": 8, "attention_dim": 8, "dropout": 0.0, "num_layers": 2},
}
D = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(lengths, frames=None, pad_value=float("nan"), seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    feats = torch.randn(len(lengths), frames or int(lengths.max()), D, generator=gen)
    for i, n in enumerate(lengths.tolist()):
        feats[i, n:] = pad_value
    return feats, lengths


def test_new_plugins_are_registered_and_listed():
    assert set(FRAME_HEADS) <= {s.name for s in ser_plugins.list_plugins("aggregator")}
    assert "cosine" in {s.name for s in ser_plugins.list_plugins("classifier")}
    listed = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "list"], capture_output=True, text=True,
                            check=True).stdout
    for name in (*FRAME_HEADS, "cosine"):
        assert name in listed


# --- padding exactness ------------------------------------------------------------------------

@pytest.mark.parametrize("name", FRAME_HEADS)
def test_training_mode_output_ignores_padding_values_and_amount(name):
    """In training mode (batch statistics on) the padding's values and length still change nothing."""
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator(name, input_dim=D, **SMALL[name]).train()
    feats, lengths = _batch((9, 4, 1, 7), pad_value=float("nan"))
    more, _ = _batch((9, 4, 1, 7), frames=14, pad_value=float("inf"))
    more[:, :9] = feats  # same valid frames, 5 more padded frames of inf
    state = {k: v.clone() for k, v in agg.state_dict().items()}
    first = agg(feats, lengths)
    agg.load_state_dict(state)  # undo the running-statistics update
    torch.testing.assert_close(agg(more, lengths), first, atol=1e-5, rtol=0)
    assert torch.isfinite(first).all()


@pytest.mark.parametrize("name", ["ecapa_tdnn", "cnn_self_attention", "bilstm_attention"])
def test_frame_level_outputs_of_a_padded_batch_equal_each_utterance_alone(name):
    """Not only the pooled vector: every valid output frame (convolutions reach into the padding)."""
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator(name, input_dim=D, **SMALL[name]).eval()
    feats, lengths = _batch((11, 5, 2), pad_value=float("nan"))
    frames, mask = agg.frame_outputs(feats, lengths)
    time_axis = -1 if mask.dim() == 3 else 1  # convolutional heads: [B, C, T]; the LSTM: [B, T, H]
    for i, n in enumerate(lengths.tolist()):
        alone, alone_mask = agg.frame_outputs(feats[i:i + 1, :n], lengths[i:i + 1])
        valid = int(alone_mask.sum())
        got = frames[i:i + 1].narrow(time_axis, 0, valid)
        torch.testing.assert_close(got, alone.narrow(time_axis, 0, valid), atol=1e-5, rtol=0)
        assert int(mask[i].sum()) == valid


def test_masked_batch_norm_equals_batch_norm_over_the_valid_frames_only():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6)
    lengths = torch.tensor([6, 2, 4])
    mask = (torch.arange(6) < lengths.unsqueeze(1)).unsqueeze(1)
    x_padded = x.masked_fill(~mask, 1e6)  # inside a network padded frames hold finite values
    ours, ref = MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4, momentum=1.0)  # warm start: batch 1 counts fully
    out = ours(x_padded, mask)
    valid = torch.cat([x[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1)  # [C, 12]
    expected = ref(valid.t().contiguous()).t()
    torch.testing.assert_close(torch.cat([out[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1), expected)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, torch.ones_like(mask))[0], ref(x[0].t().contiguous()).t())


def test_running_statistics_start_from_the_data():
    """The first 10 batches are averaged (momentum 1, 1/2, ..., 1/10), then momentum 0.1."""
    assert [warm_momentum(0.1, n) for n in (0, 1, 3, 9, 10, 500)] == [1.0, 0.5, 0.25, 0.1, 0.1, 0.1]
    torch.manual_seed(0)
    batches = [torch.randn(5, 3) * 2 + i for i in range(4)]
    norm, masked = WarmBatchNorm1d(3), MaskedBatchNorm1d(3)
    for b in batches:
        norm(b)
        masked(b.t().unsqueeze(0), torch.ones(1, 1, 5, dtype=torch.bool))
    expected = torch.stack([b.mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected)
    torch.testing.assert_close(masked.running_mean, expected)
    assert isinstance(norm, torch.nn.modules.batchnorm._BatchNorm)  # the trainer skips 1-utterance batches for it


def test_time_pool_centres_windows_and_keeps_every_frame():
    x = torch.arange(1.0, 5.0).view(1, 1, 4)  # frames 1, 2, 3, 4
    pooled, mask = masked_time_pool(x, torch.ones(1, 1, 4, dtype=torch.bool), 5)
    # windows [-2, 3) and [3, 8): frames {1, 2, 3} and {4}
    torch.testing.assert_close(pooled, torch.tensor([[[2.0, 4.0]]]))
    assert mask.tolist() == [[[True, True]]]
    padded = torch.cat([x, torch.full((1, 1, 7), 1e6)], dim=-1)  # finite inside a network
    pooled2, mask2 = masked_time_pool(padded, (torch.arange(11) < 4).view(1, 1, -1), 5)
    torch.testing.assert_close(pooled2[mask2.expand_as(pooled2)], pooled.flatten())


# --- ecapa_tdnn -------------------------------------------------------------------------------

def test_ecapa_structure_follows_the_paper():
    agg = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=80, channels=64, scale=8, embedding_dim=32,
                                        dilations=[2, 3, 4])
    assert agg.output_dim == 32
    assert len(agg.blocks) == 3
    assert [b.res2.branches[0].conv.dilation[0] for b in agg.blocks] == [2, 3, 4]
    assert all(len(b.res2.branches) == 7 for b in agg.blocks)  # scale - 1 convolutions, first group passes
    assert agg.first.conv.kernel_size == (5,)
    assert agg.aggregate.conv.in_channels == 3 * 64 and agg.aggregate.conv.out_channels == 3 * 64  # MFA
    assert agg.pool.hidden.in_channels == 3 * (3 * 64)  # frame + utterance mean + std (global context)
    assert agg.pool.scores.out_channels == 3 * 64  # one attention distribution per channel
    local = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=80, global_context=False, mfa_channels=100)
    assert local.pool.hidden.in_channels == 100 and local.embed.in_features == 200
    assert isinstance(agg.embed_norm, torch.nn.LayerNorm)  # default: each utterance on its own
    paper = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=80, utterance_norm="batch")
    assert isinstance(paper.pool_norm, WarmBatchNorm1d) and isinstance(paper.embed_norm, WarmBatchNorm1d)
    bare = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=80, utterance_norm="none")
    assert isinstance(bare.embed_norm, torch.nn.Identity)


def test_paper_size_ecapa_has_the_expected_parameter_count():
    """C=512, scale 8, embedding 192: the paper reports 6.2 M parameters (with its 80-dim fbank input)."""
    agg = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=80, channels=512, scale=8, embedding_dim=192,
                                        se_channels=128, attention_channels=128)
    count = sum(p.numel() for p in agg.parameters())
    assert 5.8e6 < count < 6.6e6, count


def test_res2_first_group_passes_unchanged_and_attention_weights_sum_to_one():
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=D, **SMALL["ecapa_tdnn"]).eval()
    res2 = agg.blocks[0].res2
    x = torch.randn(2, 16, 7)
    mask = torch.ones(2, 1, 7, dtype=torch.bool)
    torch.testing.assert_close(res2(x, mask)[:, :4], x[:, :4])
    frames, mask = agg.frame_outputs(*_batch((7, 3)))
    weights = agg.pool.weights(frames, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, frames.shape[1]))
    assert torch.all(weights[1, :, 3:] == 0)


def test_uniform_channel_attention_gives_plain_statistics():
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator("ecapa_tdnn", input_dim=D, **SMALL["ecapa_tdnn"]).eval()
    with torch.no_grad():
        agg.pool.scores.weight.zero_()
        agg.pool.scores.bias.zero_()
    frames, mask = agg.frame_outputs(*_batch((7, 3)))
    pooled = agg.pool(frames, mask)
    for i, n in enumerate((7, 3)):
        valid = frames[i, :, :n]
        expected = torch.cat([valid.mean(-1), torch.sqrt(valid.var(-1, unbiased=False) + 1e-5)])
        torch.testing.assert_close(pooled[i], expected)


# --- cnn_self_attention / bilstm_attention ----------------------------------------------------

def test_cnn_self_attention_defaults_are_s3prl_emotion_sizes_and_attention_is_a_distribution():
    agg = ser_plugins.create_aggregator("cnn_self_attention", input_dim=256)
    assert agg.output_dim == 80 and agg.pool == 5 and len(agg.convs) == 3
    assert all(c.kernel_size == (5,) for c in agg.convs) and agg.dropout.p == 0.4
    agg.eval()
    feats, lengths = _batch((23, 9), frames=23)
    weights = agg.attention(torch.randn(2, 23, 256), lengths)
    assert weights.shape == (2, 5)  # ceil((23 + 2) / 5) windows
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert torch.all(weights[1, 3:] == 0)  # 9 frames -> 3 windows


def test_bilstm_equals_a_packed_bidirectional_lstm_with_the_same_weights():
    """Each direction sees the utterance's own valid frames only: exactly pack_padded_sequence's LSTM."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator("bilstm_attention", input_dim=D, **SMALL["bilstm_attention"]).eval()
    packed_lstm = torch.nn.LSTM(D, 8, num_layers=2, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for layer, (fw, bw) in enumerate(zip(agg.forward_lstms, agg.backward_lstms)):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(packed_lstm, f"{kind}_l{layer}").copy_(getattr(fw, f"{kind}_l0"))
                getattr(packed_lstm, f"{kind}_l{layer}_reverse").copy_(getattr(bw, f"{kind}_l0"))
    feats, lengths = _batch((8, 3, 5), pad_value=5.0)
    out, _ = agg.frame_outputs(feats, lengths)
    packed = pack_padded_sequence(feats, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(packed_lstm(packed)[0], batch_first=True, total_length=8)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    unpacked, _ = packed_lstm(feats)  # without packing, the backward direction starts in the padding
    assert not torch.allclose(unpacked[1, :3, 8:], expected[1, :3, 8:])
    weights = agg.attention(feats, lengths)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert torch.all(weights[1, 3:] == 0)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("ecapa_tdnn", {"channels": 30, "scale": 4}, r"channels \(30\) must be divisible by scale \(4\)"),
        ("ecapa_tdnn", {"kernel_size": 4}, "kernel_size must be odd"),
        ("ecapa_tdnn", {"dilations": []}, "dilations must be a non-empty list"),
        ("ecapa_tdnn", {"embedding_dim": 0}, "embedding_dim must be a positive integer"),
        ("ecapa_tdnn", {"utterance_norm": "group"}, "choose one of: batch, layer, none"),
        ("cnn_self_attention", {"pool": 0}, "pool must be a positive integer"),
        ("cnn_self_attention", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("cnn_self_attention", {"kernel_size": 2}, "kernel_size must be odd"),
        ("bilstm_attention", {"hidden_size": 0}, "hidden_size must be a positive integer"),
        ("bilstm_attention", {"num_layers": 1.5}, "num_layers must be a positive integer"),
    ],
)
def test_bad_frame_head_options_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ser_plugins.create_aggregator(name, input_dim=D, **kwargs)


# --- cosine classifier ------------------------------------------------------------------------

def test_cosine_logits_are_scaled_cosines_to_the_prototypes():
    clf = ser_plugins.create_classifier("cosine", 5, 3, scale=7.0)
    x = torch.randn(4, 5)
    expected = 7.0 * torch.nn.functional.cosine_similarity(x.unsqueeze(1), clf.prototypes.unsqueeze(0), dim=-1)
    torch.testing.assert_close(clf(x), expected)
    torch.testing.assert_close(clf(3.5 * x), clf(x))  # only the direction counts
    assert clf.log_scale.requires_grad
    assert not ser_plugins.create_classifier("cosine", 5, 3, learn_scale=False).log_scale.requires_grad


def test_additive_margin_lowers_only_the_target_logit_by_s_times_m():
    clf = ser_plugins.create_classifier("cosine", 5, 3, scale=30.0, margin=0.2)
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    logits = clf(x)
    adjusted = clf.training_logits(logits, y)
    diff = logits - adjusted
    onehot = torch.nn.functional.one_hot(y, 3).bool()
    torch.testing.assert_close(diff[onehot], torch.full((4,), 6.0), atol=1e-4, rtol=0)
    assert torch.all(diff[~onehot].abs() < 1e-5)
    no_margin = ser_plugins.create_classifier("cosine", 5, 3)
    assert no_margin.training_logits(logits, y) is logits


def test_angular_margin_adds_m_to_the_target_angle():
    clf = ser_plugins.create_classifier("cosine", 5, 3, scale=30.0, learn_scale=False, margin=0.2,
                                        margin_type="angular")
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    cos = clf.cosines(x).detach()
    adjusted = clf.training_logits(clf(x), y).detach() / 30.0
    for i, c in enumerate(y.tolist()):
        theta = math.acos(float(cos[i, c]))
        want = math.cos(theta + 0.2) if theta + 0.2 <= math.pi else float(cos[i, c]) - 0.2 * math.sin(0.2)
        assert float(adjusted[i, c]) == pytest.approx(want, abs=1e-4)
    far = clf.training_logits(torch.tensor([[-29.9, 0.0, 0.0]]), torch.tensor([0])) / 30.0  # theta near pi
    assert float(far[0, 0]) < -29.9 / 30.0  # still lower than without margin: monotonic past pi - m


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.0}, "scale must be positive"),
        ({"margin": -0.1}, r"margin must be in \[0, 1\)"),
        ({"margin": 1.7, "margin_type": "angular"}, r"margin must be in \[0, 1.571\)"),
        ({"margin_type": "arc"}, "choose one of: additive, angular"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_cosine_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ser_plugins.create_classifier("cosine", 5, 3, **kwargs)


# --- through the runner -----------------------------------------------------------------------

@pytest.mark.parametrize("name", FRAME_HEADS)
def test_frame_heads_train_in_the_runner_on_frozen_fbank(fast_recipe, tmp_path, name):
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    fast_recipe.update(aggregator={"name": name, **SMALL[name]}, training={"epochs": 1, "batch_size": 16},
                       features={"normalize": "speaker"} if name == "ecapa_tdnn" else {})
    out = tmp_path / name
    summary = run_recipe(load_recipe(fast_recipe), str(out), folds=["1"], progress=False)
    assert summary["aggregator"] == name
    fold = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    assert fold["n"] == 20 and len(fold["history"]) == 1 and 0 <= fold["ua"] <= 1
    assert (out / "folds" / "Session1" / "best.safetensors").is_file()


def test_cosine_margin_is_applied_by_the_trainer_and_prediction_works(fast_recipe, tmp_path, monkeypatch):
    from downstreams.cosine import CosineClassifier
    from ser_plugins.deploy.predict import Predictor
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    calls = []
    original = CosineClassifier.training_logits

    def spy(self, logits, targets):
        out = original(self, logits, targets)
        calls.append(float((logits - out).detach().abs().max()))
        return out

    monkeypatch.setattr(CosineClassifier, "training_logits", spy)
    fast_recipe.update(aggregator={"name": "ecapa_tdnn", **SMALL["ecapa_tdnn"]},
                       classifier={"name": "cosine", "scale": 30.0, "learn_scale": False, "margin": 0.2,
                                   "margin_type": "angular"},
                       training={"epochs": 2, "batch_size": 16})
    out = tmp_path / "cos"
    run_recipe(load_recipe(fast_recipe), str(out), folds=["1"], progress=False)
    assert calls and all(c > 0 for c in calls)  # every training batch's target logits got the margin
    wav = next(iter(sorted(Path(fast_recipe["corpus"]["root"]).rglob("*.wav"))))
    (res,) = Predictor(out).predict_files([str(wav)])
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_frame_heads_train_with_a_fine_tuned_upstream(fast_recipe, tmp_path):
    pytest.importorskip("transformers")
    from test_hf_upstream import save_tiny

    from ser_plugins.runtime.checkpoint import load_weights
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    model_dir = save_tiny(str(tmp_path / "hubert"), "hubert_base")
    initial = ser_plugins.create_upstream("hf", model=model_dir).state_dict()
    for name in FRAME_HEADS:
        fast_recipe.update(upstream={"name": "hf", "model": model_dir}, features={"layer": "weighted_sum"},
                           aggregator={"name": name, **SMALL[name]},
                           finetune={"mode": "finetune", "upstream_lr": 1e-4},
                           training={"epochs": 1, "max_steps": 2, "batch_size": 8, "max_duration": 1.5})
        out = tmp_path / name
        run_recipe(load_recipe(fast_recipe), str(out), folds=["1"], progress=False)
        saved = load_weights(out / "folds" / "Session1" / "best.safetensors")
        upstream = {k[len("upstream."):]: v for k, v in saved.items() if k.startswith("upstream.")}
        assert upstream, name  # a fine-tuned upstream is saved with the fold's checkpoint
        assert any(not torch.equal(v, initial[k]) for k, v in upstream.items()), name  # and it was trained
        assert any(k.startswith("head.aggregator.") for k in saved), name


@functools.lru_cache(maxsize=None)
def cpu_bf16_lstm_missing() -> Optional[str]:
    """Why this CPU cannot run an LSTM under bf16 autocast, or None when it can (tried once, on a tiny LSTM).

    oneDNN has no bf16 LSTM kernel without AVX-512 (e.g. an AMD EPYC of the Zen 2/3 generation):
    "could not create a primitive descriptor for the LSTM forward propagation primitive".
    """
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(2, 2, batch_first=True)(torch.randn(1, 3, 2))
    except RuntimeError as exc:
        return " ".join(str(exc).split(". ")[0].split())[:160]
    return None


def _bf16_skip_reason(device: str, agg: torch.nn.Module) -> Optional[str]:
    if device == "cuda":
        return None if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no CUDA GPU with bf16"
    if any(isinstance(m, torch.nn.LSTM) for m in agg.modules()):
        missing = cpu_bf16_lstm_missing()
        if missing:
            return (f"this CPU has no bf16 LSTM kernel ({missing}); mixed precision is a no-op on CPU in a run "
                    "(trainer.autocast), and the GPU variant of this test covers bf16")
    return None


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", FRAME_HEADS)
def test_frame_heads_run_under_bfloat16_autocast(name, device):
    """The grid fine-tunes in bf16 (on a GPU): outputs stay finite and the padding still changes nothing.

    On the CPU too, where the CPU has the bf16 kernels the head needs (not every one has them for the
    LSTM: skipped there, with the reason).
    """
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator(name, input_dim=D, **SMALL[name])
    reason = _bf16_skip_reason(device, agg)
    if reason:
        pytest.skip(reason)
    agg.to(device)
    feats, lengths = _batch((9, 4, 6), pad_value=float("nan"))
    feats, lengths = feats.to(device), lengths.to(device)
    feats.requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = agg(feats, lengths)
    assert out.shape == (3, agg.output_dim) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert torch.all(feats.grad[1, 4:] == 0) and torch.isfinite(feats.grad).all()


def test_grid_generator_adds_the_frame_heads_only_with_its_flag(tmp_path):
    """Default output unchanged (the committed grid); --frame-heads adds 60 valid recipes."""
    import yaml

    from ser_plugins.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    generator = root / "recipes" / "iemocap" / "make_grid.py"
    proc = subprocess.run([sys.executable, str(generator), "--frame-heads", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "125 recipes" in proc.stdout
    committed = {p.name: p.read_text() for p in (root / "recipes" / "iemocap").glob("*.yaml")}
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    assert all(generated[name] == text for name, text in committed.items())  # the default grid, unchanged
    extra = sorted(set(generated) - set(committed))
    assert len(extra) == 60
    for head in FRAME_HEADS:
        assert sum(head in name for name in extra) == 20  # 5 upstreams x 2 modes x 2 classifiers
    built = set()
    for name in extra:
        recipe = load_recipe(tmp_path / name)  # names and options checked against the plugins
        assert yaml.safe_load(generated[name])["aggregator"]["name"] in FRAME_HEADS
        agg_cfg = recipe.aggregator
        if agg_cfg.name not in built:  # each head builds at its grid size on the projected features
            agg = ser_plugins.create_aggregator(agg_cfg.name, recipe.features.projection,
                                                **agg_cfg.options).eval()
            x = torch.randn(2, 40, recipe.features.projection)
            assert agg(x, torch.tensor([40, 17])).shape == (2, agg.output_dim)
            built.add(agg_cfg.name)
    assert built == set(FRAME_HEADS)
    check = subprocess.run([sys.executable, str(generator), "--frame-heads", "--check", "--out", str(tmp_path)],
                           capture_output=True, text=True, cwd=root)
    assert check.returncode == 0
