"""Contract checks as standalone named checks: every failure reported, each check alone, one pytest test each."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ser_plugins import Aggregator, Classifier, Corpus, Upstream, UpstreamOutput, Utterance
from ser_plugins.plugins.contracts import lengths_to_mask
from ser_plugins.testing import (AGGREGATOR_CHECKS, CLASSIFIER_CHECKS, CORPUS_CHECKS, UPSTREAM_CHECKS, Check,
                                 ContractCheckError, check_aggregator, check_aggregator_gradients,
                                 check_aggregator_padding_invariance, check_classifier, check_corpus,
                                 check_corpus_utterance_fields, check_upstream, check_upstream_deterministic,
                                 check_upstream_padding_invariance, checks_for, parametrize_checks)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class AllFramesMean(Aggregator):
    """Averages the padding too: fails 'padding_invariance' and 'gradients', passes the rest."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.output_dim, self.uses_only_mean = input_dim, True

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return features.mean(1)


class MaskedMean(Aggregator):
    """A correct masked mean with one trainable scale."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.output_dim, self.uses_only_mean = input_dim, True
        self.scale = torch.nn.Parameter(torch.ones(input_dim))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, features.shape[1]).unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(1) / lengths.unsqueeze(-1).to(features.dtype) * self.scale


class BatchNormalised(Classifier):
    """Standardises over the batch even in eval mode: fails 'batch_independence' only."""

    def __init__(self, input_dim: int, num_classes: int) -> None:
        super().__init__()
        self.out = torch.nn.Linear(input_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x - x.mean(0, keepdim=True))


class TwoFaultCorpus(Corpus):
    """Duplicate ids ('utterances') and a ``problems`` that is not a list ('problems')."""

    labels = ["neu", "ang"]

    def __init__(self, root: str = "/data") -> None:
        super().__init__()
        self.root = root

    def load(self):
        utts = [Utterance(f"u{i}", f"{self.root}/u{i}.wav", self.labels[i % 2], f"spk{i % 3}") for i in range(4)]
        self.problems = "none"
        return utts + [utts[0]]


class Frames(Upstream):
    """Mean and spread of 400-sample frames every 160 samples; ``leak`` reads the padding, ``noisy`` is random."""

    def __init__(self, leak: bool = False, noisy: bool = False) -> None:
        super().__init__()
        self.leak, self.noisy = leak, noisy
        self.hop_length, self.min_samples, self.hidden_sizes = 160, 400, [2]
        self.calls = 0

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return (wav_lengths - 400) // 160 + 1

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        self.calls += 1
        if self.leak:
            wavs = wavs - wavs.mean(1, keepdim=True)
        frames = wavs.unfold(1, 400, 160)
        feats = torch.stack([frames.mean(-1), frames.std(-1)], -1)
        if self.noisy:
            feats = feats + torch.rand(()).item()
        return UpstreamOutput([feats], self.frame_lengths(wav_lengths))


def test_every_failure_is_reported_together():
    with pytest.raises(ContractCheckError) as err:
        check_aggregator(AllFramesMean, input_dim=4)
    assert [f.check for f in err.value.failures] == ["padding_invariance", "gradients"]
    text = str(err.value)
    assert text.startswith("aggregator 'AllFramesMean' (distribution 'unknown', ")
    assert "failed 2 of 6 checks ('padding_invariance', 'gradients'):" in text
    assert "\n  - failed check 'padding_invariance': expected utterance 0 pooled the same with zero padding" in text
    assert "\n  - failed check 'gradients': expected no gradient on utterance 0's padded frames" in text
    assert err.value.check is None and err.value.kind == "aggregator" and isinstance(err.value, AssertionError)


def test_an_upstream_with_two_faults_fails_both_checks():
    with pytest.raises(ContractCheckError) as err:
        check_upstream(Frames, leak=True, noisy=True)
    assert {"padding_invariance", "deterministic"} <= {f.check for f in err.value.failures}


def test_a_single_failure_keeps_its_message():
    with pytest.raises(ContractCheckError) as err:
        check_classifier(BatchNormalised)
    assert err.value.failures == [err.value] and err.value.check == "batch_independence"
    assert str(err.value).startswith("classifier 'BatchNormalised' (distribution 'unknown', ")
    assert " failed check 'batch_independence': expected row 0's logits in a batch to equal its logits alone, got " \
           in str(err.value)


def test_a_corpus_reports_every_failed_check():
    with pytest.raises(ContractCheckError) as err:
        check_corpus(TwoFaultCorpus)
    assert [f.check for f in err.value.failures] == ["utterances", "problems"]
    assert "unique utterance ids" in str(err.value) and "a list of CorpusProblem" in str(err.value)


def test_one_check_runs_alone_on_an_instance():
    with pytest.raises(ContractCheckError) as alone:
        check_aggregator_padding_invariance(AllFramesMean(4), input_dim=4)
    with pytest.raises(ContractCheckError) as together:
        check_aggregator(AllFramesMean, input_dim=4)
    assert str(alone.value).replace("AllFramesMean' (", "") == str(together.value.failures[0]).replace(
        "AllFramesMean' (", "")  # the same message, alone or among the others
    assert check_aggregator_gradients(MaskedMean(4), input_dim=4) is None  # passed
    skipped = Frames()
    skipped.batch_invariant = False
    assert check_upstream_padding_invariance(skipped) == "batch_invariant is False"
    assert check_upstream_deterministic(Frames()) == "an instance was given: no second instance to compare"
    with pytest.raises(ContractCheckError, match="failed check 'utterances': expected unique utterance ids"):
        check_corpus_utterance_fields(TwoFaultCorpus())
    with pytest.raises(TypeError):  # a wrong setting is the caller's mistake, not a contract failure
        check_aggregator_gradients(MaskedMean(4), input_dimm=4)


def test_the_lists_are_the_checks_check_kind_runs():
    assert check_aggregator(MaskedMean, input_dim=4, devices=[]) == [c.name for c in AGGREGATOR_CHECKS]
    assert [c.name for c in UPSTREAM_CHECKS] == ["declaration", "output", "exact_frames", "padding_invariance",
                                                 "deterministic", "identity", "finetune"]
    assert [c.name for c in CLASSIFIER_CHECKS] == ["output", "deterministic", "batch_independence", "gradients"]
    assert [c.name for c in CORPUS_CHECKS] == ["declaration", "load", "utterances", "problems", "deterministic"]
    assert [c.name for c in checks_for("classifier", ["cpu"])][-1] == "device:cpu"
    assert all(isinstance(c, Check) and c.kind == "upstream" for c in UPSTREAM_CHECKS)
    device = checks_for("aggregator", ["cpu"])[-1]
    assert device(MaskedMean(4), input_dim=4, atol=1e-5, seconds=1.0) is None  # settings it does not take: ignored


def test_checks_of_one_run_share_the_forward_passes():
    up = Frames()
    report = check_upstream(up, devices=[])
    assert "finetune (skipped: no 'full' fine-tuning mode (nothing to train))" in report  # no training pass
    # the padded batch once, each of the 3 utterances alone once, and the second call of 'deterministic'
    assert up.calls == 5


def test_the_pytest_helper_gives_one_test_per_check(tmp_path):
    (tmp_path / "pools.py").write_text(textwrap.dedent("""
        import torch
        from ser_plugins import Aggregator
        from ser_plugins.plugins.contracts import lengths_to_mask

        class MaskedMean(Aggregator):
            def __init__(self, input_dim):
                super().__init__()
                self.output_dim, self.uses_only_mean = input_dim, True
                self.scale = torch.nn.Parameter(torch.ones(input_dim))

            def forward(self, features, lengths):
                mask = lengths_to_mask(lengths, features.shape[1]).unsqueeze(-1).to(features.dtype)
                return (features * mask).sum(1) / lengths.unsqueeze(-1).to(features.dtype) * self.scale

        class AllFramesMean(MaskedMean):
            def forward(self, features, lengths):
                return features.mean(1) * self.scale
    """))
    (tmp_path / "test_contract.py").write_text(textwrap.dedent("""
        import sys
        from pools import AllFramesMean, MaskedMean
        from ser_plugins.testing import parametrize_checks

        @parametrize_checks("aggregator", MaskedMean, input_dim=4, devices=[])
        def test_good(check):
            check()

        @parametrize_checks("aggregator", AllFramesMean, input_dim=4, devices=[])
        def test_bad(check):
            check()

        @parametrize_checks("aggregator", "no_such_pool_xyz", devices=[])
        def test_missing(check):
            check()
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:randomly",
                          "test_contract.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout
    summary = out.strip().splitlines()[-1]
    assert "8 failed, 10 passed" in summary and "error" not in summary, out + res.stderr
    for name in ("declaration", "output", "padding_invariance", "gradients", "uses_only_mean", "deterministic"):
        assert f"test_contract.py::test_good[{name}] PASSED" in out, name
        assert f"test_contract.py::test_missing[{name}] FAILED" in out, name
    assert "test_contract.py::test_bad[padding_invariance] FAILED" in out
    assert "test_contract.py::test_bad[gradients] FAILED" in out
    assert "test_contract.py::test_bad[output] PASSED" in out
    assert "aggregator 'no_such_pool_xyz' failed check 'import'" in out


def test_a_skipped_check_is_a_skipped_test(tmp_path):
    (tmp_path / "test_skip.py").write_text(textwrap.dedent("""
        import torch
        from ser_plugins import Classifier
        from ser_plugins.testing import parametrize_checks

        class Fixed(Classifier):
            def __init__(self, input_dim, num_classes):
                super().__init__()
                self.w = torch.randn(input_dim, num_classes, generator=torch.Generator().manual_seed(0))

            def forward(self, x):
                return x @ self.w

        @parametrize_checks("classifier", Fixed, devices=[])
        def test_head(check):
            check()
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_skip.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "3 passed, 1 skipped" in res.stdout, res.stdout + res.stderr
    assert "gradients: no trainable parameters" in res.stdout


def test_importing_the_checks_needs_no_pytest():
    code = ("import sys; sys.modules['pytest'] = None\n"
            "import ser_plugins.testing as t\n"
            "assert len(t.UPSTREAM_CHECKS) == 7\n"
            "try:\n    t.parametrize_checks('upstream', 'fbank')\nexcept ImportError:\n    print('needs pytest')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "needs pytest", res.stderr
