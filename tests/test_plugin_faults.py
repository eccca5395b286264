"""Plugin faults found before training, not by the accuracy (issue 24, item 5).

A third-party distribution (``fake_dist``: a real entry-point source) ships plugins broken on
purpose: an aggregator that returns NaN for the padded rows only (it used to pass ``ser validate``
and ``ser list --check`` and stop training mid-fold with "no finite loss in a whole epoch", naming
nothing), an aggregator that ignores ``lengths`` (it used to pass everything and train silently to
a worse UA), and an upstream that reads its padding although it declares ``batch_invariant``.
``ser validate`` and ``ser list --check`` now refuse each with one line naming it;
``model.locate_non_finite`` names the stage a non-finite loss comes from; the boundary quotes an
offending ``lengths`` value wherever it is in the batch; a plugin that cannot be imported fails the
contract checker as an assertion.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from ser_plugins import Upstream, UpstreamOutput, cli, registry
from ser_plugins.plugins.boundary import PluginContractError, check_upstream_output
from ser_plugins.model import SERModel, build_head, locate_non_finite
from ser_plugins.plugins.probe import check_aggregator_padding, probe_upstream
from ser_plugins.recipe import FeaturesConfig, PluginSection
from ser_plugins.testing import ContractCheckError, check_aggregator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = """
    import torch
    from ser_plugins import Aggregator, Classifier, Upstream, UpstreamOutput


    def _mask(features, lengths):
        return (torch.arange(features.shape[1], device=features.device) < lengths[:, None])[..., None]


    class NanOnPadded(Aggregator):
        '''Masked mean, but NaN for every utterance shorter than the batch's longest.'''

        def __init__(self, input_dim: int):
            super().__init__()
            self.output_dim = input_dim

        def forward(self, features, lengths):
            mean = features.masked_fill(~_mask(features, lengths), 0).sum(1) / lengths[:, None]
            padded = (lengths < features.shape[1])[:, None]
            return torch.where(padded, torch.full_like(mean, float("nan")), mean)


    class IgnoresLengths(Aggregator):
        '''Mean and max over every frame, padding included: finite, but padding changes it.'''

        def __init__(self, input_dim: int):
            super().__init__()
            self.output_dim = 2 * input_dim

        def forward(self, features, lengths):
            return torch.cat([features.mean(1), features.max(1).values], -1)


    class GoodPool(Aggregator):
        '''Masked mean: keeps the contract.'''

        def __init__(self, input_dim: int):
            super().__init__()
            self.output_dim = input_dim

        def forward(self, features, lengths):
            return features.masked_fill(~_mask(features, lengths), 0).sum(1) / lengths[:, None]


    class NanClassifier(Classifier):
        def __init__(self, input_dim: int, num_classes: int):
            super().__init__()
            self.out = torch.nn.Linear(input_dim, num_classes)

        def forward(self, x):
            return self.out(x) * float("nan")


    class BatchNormalisedEnergy(Upstream):
        '''Frame log energies standardised over the whole padded batch; ``declare`` sets batch_invariant.'''

        def __init__(self, declare: bool = True):
            super().__init__()
            self.hop_length, self.min_samples, self.hidden_sizes = 160, 400, [2]
            self.batch_invariant = declare

        def frame_lengths(self, wav_lengths):
            return (wav_lengths - 400) // 160 + 1

        def forward(self, wavs, wav_lengths):
            wavs = (wavs - wavs.mean()) / (wavs.std() + 1e-5)   # over the padding too
            frames = wavs.unfold(1, 400, 160)
            feats = torch.stack([frames.pow(2).mean(-1).add(1e-6).log(), frames.mean(-1)], -1)
            return UpstreamOutput([feats], self.frame_lengths(wav_lengths))
"""
DIST = "broken-pool-plugin"


@pytest.fixture
def broken(fake_dist):
    fake_dist(DIST, "broken_pool_mod", PLUGIN, {
        "ser_plugins.aggregators": {"nan_on_padded": "broken_pool_mod:NanOnPadded",
                                    "ignores_lengths": "broken_pool_mod:IgnoresLengths",
                                    "good_pool": "broken_pool_mod:GoodPool"},
        "ser_plugins.classifiers": {"nan_classifier": "broken_pool_mod:NanClassifier"},
        "ser_plugins.upstreams": {"batch_normalised": "broken_pool_mod:BatchNormalisedEnergy"},
    })


def _named(kind: str, name: str, cls: str, qualified: bool = False) -> str:
    """How the messages name a plugin of the broken distribution (``ser list`` builds it by ``dist:name``)."""
    name = f"{DIST}:{name}" if qualified else name
    return f"{kind} {name!r} (distribution {DIST!r}, broken_pool_mod.{cls})"


def _recipe(tmp_path, root, upstream="fbank", aggregator="good_pool", classifier="linear"):
    recipe = {"name": "faults", "corpus": {"name": "iemocap", "root": str(root)}, "upstream": upstream,
              "aggregator": aggregator, "classifier": classifier,
              "training": {"epochs": 1, "batch_size": 16, "patience": None}, "output": {"tensorboard": False}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err  # one line, no traceback
    return err[0]


# --- ser validate -----------------------------------------------------------------------------------

def test_validate_accepts_a_plugin_that_masks_its_padding(broken, tmp_path, tiny_demo_root, capsys):
    assert cli.main(["validate", _recipe(tmp_path, tiny_demo_root)]) == 0
    assert "padding checks OK" in capsys.readouterr().out


@pytest.mark.parametrize("aggregator, cls, fault", [
    ("nan_on_padded", "NanOnPadded", "zero padding: expected finite values, got NaN/inf in rows [0, 1, 2] "
                                     "(the padded utterances)"),
    ("ignores_lengths", "IgnoresLengths", "mask them with lengths"),
])
def test_validate_refuses_an_aggregator_that_reads_its_padding(aggregator, cls, fault, broken, tmp_path,
                                                               tiny_demo_root, capsys):
    assert cli.main(["validate", _recipe(tmp_path, tiny_demo_root, aggregator=aggregator)]) == 2
    line = _error_line(capsys)
    assert _named("aggregator", aggregator, cls) in line and fault in line, line


def test_validate_refuses_an_upstream_that_reads_its_padding_unless_it_says_so(broken, tmp_path, tiny_demo_root,
                                                                                 capsys):
    assert cli.main(["validate", _recipe(tmp_path, tiny_demo_root, upstream="batch_normalised")]) == 2
    line = _error_line(capsys)
    assert _named("upstream", "batch_normalised", "BatchNormalisedEnergy") in line
    assert "the same valid frames as the utterance alone (it declares batch_invariant = True" in line
    declared = {"name": "batch_normalised", "declare": False}  # batch_invariant = False: legitimate, accepted
    assert cli.main(["validate", _recipe(tmp_path, tiny_demo_root, upstream=declared)]) == 0


# --- ser list --check -------------------------------------------------------------------------------

def test_list_check_refuses_the_broken_plugins_with_one_line_each(broken, capsys):
    assert cli.main(["list", "--check", "--pattern", "*_*"]) == 1
    out = capsys.readouterr()
    lines = {line.split()[1]: line for line in out.out.splitlines() if not line.startswith("CLASH")}
    for name, cls, fault in [("nan_on_padded", "NanOnPadded", "expected finite values, got NaN/inf in rows [0, 1, 2]"),
                             ("ignores_lengths", "IgnoresLengths", "pooled in a batch with zero padding"),
                             ("batch_normalised", "BatchNormalisedEnergy", "in a zero-padded batch")]:
        kind = "upstream" if name == "batch_normalised" else "aggregator"
        assert f"BROKEN: {_named(kind, name, cls, qualified=True)}" in lines[name] and fault in lines[name], lines[name]
    assert "ok (ran once)" in lines["good_pool"]
    assert f"BROKEN: {_named('classifier', 'nan_classifier', 'NanClassifier', True)}" in lines["nan_classifier"]
    assert "logits for finite input: expected finite values, got NaN/inf in rows [0, 1, 2]" in lines["nan_classifier"]
    assert "4 broken plugin(s)" in out.err


def test_builtin_aggregators_and_upstreams_pass_the_padding_checks():
    for spec in registry.list_plugins("aggregator"):
        check_aggregator_padding(registry.create("aggregator", spec.name, 6).eval(), 6)
    for name in ("fbank", "mfcc", "spectrogram"):
        probe_upstream(registry.create("upstream", name), seconds=0.3)


# --- locate_non_finite ------------------------------------------------------------------------------

def _model(aggregator: str, classifier: str = "linear") -> SERModel:
    upstream = registry.create("upstream", "fbank", n_mels=8)
    head, kept = build_head(FeaturesConfig(), PluginSection(name=aggregator), PluginSection(name=classifier), upstream, 4)
    return SERModel(upstream, head, kept)


def test_locate_non_finite_names_the_plugin(broken):
    wavs, lengths = torch.randn(3, 4000), torch.tensor([4000, 2500, 1200])
    model = _model("nan_on_padded").train()
    where = locate_non_finite(model, wavs, lengths, features=False)
    assert where.startswith(_named("aggregator", "nan_on_padded", "NanOnPadded") + " gave NaN/inf for 2 of 3 "
                            "utterances (rows 1, 2)"), where
    assert "all of them padded" in where and model.training  # the model keeps its mode
    states, frames = model.extract(wavs, lengths)  # the cached-features path gives the same answer
    assert locate_non_finite(model, states, frames, features=True) == where
    assert locate_non_finite(_model("good_pool"), wavs, lengths, features=False) is None
    where = locate_non_finite(_model("good_pool", "nan_classifier"), wavs, lengths, features=False)
    assert where.startswith(_named("classifier", "nan_classifier", "NanClassifier") + " gave NaN/inf logits")
    states[0][1, :3] = float("nan")
    where = locate_non_finite(model, states, frames, features=True)
    assert where.startswith("the precomputed features (layer 0 of upstream 'fbank' (distribution 'ser-plugins'")


def test_locate_non_finite_leaves_training_as_it_was():
    """Buffers (BatchNorm statistics) and the random streams (dropout) are as before the re-run."""
    model = _model("mean", "mlp")
    model.head.classifier = torch.nn.Sequential(torch.nn.BatchNorm1d(model.head.aggregator.output_dim),
                                                torch.nn.Dropout(0.5), torch.nn.Linear(model.head.aggregator.output_dim, 4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wavs, lengths = torch.randn(2, 3000), torch.tensor([3000, 2000])
    rng = torch.get_rng_state()
    assert locate_non_finite(model, wavs, lengths, features=False) is None
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- the boundary quotes the offending lengths value ------------------------------------------------

class Framed(Upstream):
    def __init__(self) -> None:
        super().__init__()
        self.hop_length, self.min_samples, self.hidden_sizes = 160, 400, [4]

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return (wav_lengths - 400) // 160 + 1


@pytest.mark.parametrize("change, message", [
    (lambda n: 0, "expected values in 1..25, got lengths[10] = 0 in [25, 25, 25, ..., 25, 25, 0, 25 (12 in all)]"),
    (lambda n: n - 1, "(lengths[10] = 24 for 4240 samples, frame_lengths() says 25)"),
])
def test_the_lengths_error_quotes_the_offending_value_deep_in_the_batch(change, message):
    up = Framed()
    wav_lengths = torch.full((12,), 4240)
    lengths = up.frame_lengths(wav_lengths)
    lengths[10] = change(int(lengths[10]))
    out = UpstreamOutput([torch.zeros(12, 25, 4)], lengths)
    with pytest.raises(PluginContractError) as err:
        check_upstream_output(up, out, wav_lengths)
    assert message in str(err.value), str(err.value)


# --- the contract checker: a plugin that cannot be imported is a failed assertion -------------------

def test_an_import_failure_fails_the_checker_as_an_assertion(fake_dist):
    fake_dist("unimportable-plugin", "unimportable_mod", "import not_a_real_dependency_xyz\n",
              {"ser_plugins.aggregators": {"unimportable_pool": "unimportable_mod:Pool"}})
    with pytest.raises(ContractCheckError) as err:
        check_aggregator("unimportable_pool")
    assert isinstance(err.value, AssertionError) and isinstance(err.value.__cause__, registry.PluginLoadError)
    text = str(err.value)
    assert text.startswith("aggregator 'unimportable_pool' failed check 'import':")
    assert "unimportable-plugin" in text and "not_a_real_dependency_xyz" in text


def test_in_a_plugin_authors_pytest_run_it_is_a_failure_not_an_error(tmp_path):
    site = tmp_path / "site"
    (site / "raising_mod.py").parent.mkdir()
    (site / "raising_mod.py").write_text(textwrap.dedent("""
        from ser_plugins import Aggregator

        class Pool(Aggregator):
            def __init__(self, input_dim):
                raise RuntimeError("weights file missing")
    """))
    (site / "raising_plugin-0.1.dist-info").mkdir()
    (site / "raising_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: raising-plugin\n"
                                                                    "Version: 0.1\n")
    (site / "raising_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[ser_plugins.aggregators]\nraising_pool = raising_mod:Pool\nmissing_pool = not_a_module_xyz:Pool\n")
    (tmp_path / "test_contract.py").write_text(textwrap.dedent("""
        from ser_plugins.testing import check_aggregator

        def test_missing():
            check_aggregator("missing_pool")

        def test_raising():
            check_aggregator("raising_pool")
    """))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_contract.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    summary = res.stdout.strip().splitlines()[-1]
    assert "2 failed" in summary and "error" not in summary, res.stdout + res.stderr
    assert "ContractCheckError: aggregator 'missing_pool' failed check 'import'" in res.stdout
    assert "aggregator 'raising_pool' failed check 'build': raised RuntimeError: weights file missing" in res.stdout


def test_a_non_finite_loss_in_training_names_the_plugin(broken, tiny_demo_root, tmp_path):
    from helpers import recipe_for
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe
    from ser_plugins.training.trainer import TrainingDiverged

    recipe = load_recipe(recipe_for(tiny_demo_root, aggregator="nan_on_padded", classifier="linear",
                                    features={"normalize": None}, data={"precompute": False},
                                    training={"epochs": 1, "batch_size": 8}))
    with pytest.raises(TrainingDiverged) as caught:
        run_recipe(recipe, str(tmp_path / "run"), folds=["1"], progress=False)
    assert _named("aggregator", "nan_on_padded", "NanOnPadded") in str(caught.value)
