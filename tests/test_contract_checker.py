"""The contract checker (``ser_plugins.testing``) fails plugins that break the contract subtly.

The loud faults (wrong shapes, dtypes, lengths) are in test_plugin_boundary.py; these are the
ones only a second call, a second instance, a padded batch or a backward pass reveals.
"""
from __future__ import annotations

import pytest
import torch

from ser_plugins import Aggregator, Classifier, Corpus, PluginError, Upstream, UpstreamOutput, Utterance
from ser_plugins.plugins.contracts import lengths_to_mask
from ser_plugins.testing import (ContractCheckError, check_aggregator, check_classifier, check_corpus,
                                 check_upstream)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FramedMean(Upstream):
    """Mean of 400-sample frames every 160 samples, projected to 4 features; faults by option."""

    def __init__(self, fault: str = "none") -> None:
        super().__init__()
        self.fault, self.win = fault, 400
        self.hop_length, self.min_samples, self.hidden_sizes = 160, 400, [4]
        gen = None if fault == "random_init" else torch.Generator().manual_seed(0)
        self.proj = torch.nn.Linear(2, 4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(4, 2, generator=gen))
            self.proj.bias.zero_()

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        n = (wav_lengths - self.win) // self.hop_length + 1
        return torch.where(n > 1, n - 1, n) if self.fault == "consistently_short" else n

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        if self.fault == "leaks_padding":
            wavs = wavs - wavs.mean(1, keepdim=True)  # a batch-wide statistic over the padding too
        frames = wavs.unfold(1, self.win, self.hop_length)
        feats = self.proj(torch.stack([frames.mean(-1), frames.abs().mean(-1)], -1))
        if self.fault == "no_gradient":
            feats = feats.detach()
        lengths = self.frame_lengths(wav_lengths)
        if self.fault == "lengths_elsewhere":  # e.g. built on the CPU while the input is on the GPU
            lengths = lengths.to("meta")
        return UpstreamOutput([feats], lengths)


class AllFramesMean(Aggregator):
    """Averages every frame, padding included (the classic masking bug)."""

    def __init__(self, input_dim: int, declare_mean: bool = False) -> None:
        super().__init__()
        self.output_dim = input_dim
        self.uses_only_mean = declare_mean

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return features.mean(1)


class MaskedMax(Aggregator):
    """Correct masking, but may claim ``uses_only_mean`` falsely."""

    def __init__(self, input_dim: int, declare_mean: bool = False) -> None:
        super().__init__()
        self.output_dim, self.uses_only_mean = input_dim, declare_mean

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, features.shape[1]).unsqueeze(-1)
        return features.masked_fill(~mask, float("-inf")).max(1).values


class BatchNormalised(Classifier):
    """Standardises over the batch even in eval mode: a row's logits depend on the others."""

    def __init__(self, input_dim: int, num_classes: int) -> None:
        super().__init__()
        self.out = torch.nn.Linear(input_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x - x.mean(0, keepdim=True))


class ListCorpus(Corpus):
    """Utterances from a list; faults by option."""

    labels = ["neu", "ang"]

    def __init__(self, root: str, fault: str = "none") -> None:
        super().__init__()
        self.root, self.fault = root, fault

    def load(self):
        utts = [Utterance(f"u{i}", f"{self.root}/u{i}.wav", self.labels[i % 2], f"spk{i % 3}") for i in range(6)]
        if self.fault == "duplicate_ids":
            utts.append(utts[0])
        if self.fault == "unknown_label":
            utts.append(Utterance("x", f"{self.root}/x.wav", "hap", "spk0"))
        return utts


def test_a_correct_class_passes_and_gradients_are_checked():
    report = check_upstream(FramedMean)
    assert report[:5] == ["declaration", "output", "exact_frames", "padding_invariance", "deterministic"]
    assert "finetune" in report  # 'full' mode ran a backward pass


@pytest.mark.parametrize("fault, check", [
    ("random_init", "deterministic"),          # two instances with the same options disagree
    ("consistently_short", "exact_frames"),     # lengths agree with frame_lengths(), both one short
    ("leaks_padding", "padding_invariance"),    # declares batch_invariant but padding leaks in
    ("no_gradient", "finetune"),                # 'full' mode but no gradient reaches the weights
])
def test_subtle_upstream_faults_are_caught(fault, check):
    with pytest.raises(ContractCheckError, match=f"failed check '{check}'"):
        check_upstream(FramedMean, fault=fault)


def test_a_correct_aggregator_passes_and_faulty_ones_are_caught():
    assert "uses_only_mean" in check_aggregator(MaskedMax, input_dim=4)
    with pytest.raises(ContractCheckError, match="failed check 'padding_invariance'"):
        check_aggregator(AllFramesMean, input_dim=4)
    with pytest.raises(ContractCheckError, match="failed check 'uses_only_mean': expected uses_only_mean=False"):
        check_aggregator(MaskedMax, input_dim=4, declare_mean=True)


def test_a_batch_dependent_classifier_is_caught():
    with pytest.raises(ContractCheckError, match="failed check 'batch_independence'"):
        check_classifier(BatchNormalised)


def test_corpus_checks(tiny_demo_root, tmp_path):
    report = check_corpus("iemocap", root=str(tiny_demo_root))
    assert report == ["declaration", "load", "utterances", "problems", "deterministic"]
    assert "load" in check_corpus(ListCorpus, root=str(tmp_path))
    with pytest.raises(ContractCheckError, match="unique utterance ids"):
        check_corpus(ListCorpus, root=str(tmp_path), fault="duplicate_ids")
    with pytest.raises(ContractCheckError, match=r"labels from \['neu', 'ang'\], got 'hap'"):
        check_corpus(ListCorpus, root=str(tmp_path), fault="unknown_label")


def test_options_of_a_class_are_checked_like_a_recipe():
    with pytest.raises(PluginError, match="has no option 'falt' \\(did you mean 'fault'\\?\\)"):
        check_upstream(FramedMean, falt="none")


def test_outputs_must_stay_on_the_inputs_device():
    with pytest.raises(ContractCheckError, match="lengths device: expected the input's device cpu, got meta"):
        check_upstream(FramedMean, fault="lengths_elsewhere")
    assert check_upstream(FramedMean, devices=["cpu"])[-1] == "device:cpu"  # the per-device pass (CUDA on a GPU)


def test_an_instance_is_checked_without_a_second_one():
    report = check_upstream(FramedMean())
    assert "deterministic (skipped: an instance was given: no second instance to compare)" in report
