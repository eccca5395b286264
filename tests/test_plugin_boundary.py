"""A third-party plugin that breaks its contract is stopped with one line naming it, never silently accepted.

One fault per row of issue 9's table, from a pip-style installed distribution (``fake_dist``):
``ser validate`` catches it before any run (one forward pass on synthetic audio), the frozen
extraction of a run stops on it, the contract checker reports it, and ``ser list --check`` marks
the plugin broken.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ser_plugins import cli, registry
from ser_plugins.plugins.boundary import PluginContractError
from ser_plugins.data.features import extract_features
from ser_plugins.testing import ContractCheckError, check_aggregator, check_upstream

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = """
    import torch
    from ser_plugins import Aggregator, Upstream, UpstreamOutput


    class FaultyUpstream(Upstream):
        '''Three layers of sub-band log energies; ``fault`` breaks the contract in one way.'''

        def __init__(self, fault: str = "none", win: int = 400, hop: int = 160):
            super().__init__()
            self.fault, self.win = fault, win
            self.hop_length, self.min_samples = hop, win
            self.hidden_sizes = [] if fault == "no_layers_declared" else [4, 4, 4]

        def frame_lengths(self, wav_lengths):
            return (wav_lengths - self.win) // self.hop_length + 1

        def forward(self, wavs, wav_lengths):
            frames = wavs.unfold(1, self.win, self.hop_length)                      # [B, T, win]
            energy = torch.log(frames.reshape(*frames.shape[:2], 4, -1).pow(2).mean(-1) + 1e-6)
            lengths = self.frame_lengths(wav_lengths)
            mask = (torch.arange(energy.shape[1], device=wavs.device) < lengths[:, None])[..., None]
            states = [energy * mask, (energy * 0.5 + 1) * mask, energy.cumsum(-1) * mask]
            f = self.fault
            if f == "lengths_long":
                lengths = lengths + 5
            elif f == "lengths_short":
                lengths = lengths - 1
            elif f == "zero_lengths":
                lengths = lengths * 0
            elif f == "float_lengths":
                lengths = lengths.float()
            elif f == "list_lengths":
                lengths = lengths.tolist()
            elif f == "wrong_size":
                states = [s[..., :3] for s in states]
            elif f == "bdt":
                states = [s.transpose(1, 2) for s in states]
            elif f == "tensor_states":
                states = torch.stack(states)
            elif f == "wrong_batch":
                states = [s[1:] for s in states]
            elif f == "fewer_layers":
                states = states[:2]
            elif f == "tuple":
                return states, lengths
            return UpstreamOutput(states, lengths)


    class FaultyPool(Aggregator):
        '''Masked max + mean; ``fault`` breaks the contract in one way.'''

        def __init__(self, input_dim: int, fault: str = "none"):
            super().__init__()
            self.fault = fault
            self.output_dim = 2 * input_dim

        def forward(self, features, lengths):
            mask = (torch.arange(features.shape[1], device=features.device) < lengths[:, None])[..., None]
            top = features.masked_fill(~mask, float("-inf")).max(1).values
            mean = features.masked_fill(~mask, 0).sum(1) / lengths[:, None]
            if self.fault == "wrong_dim":
                return top
            if self.fault == "tuple":
                return top, mean
            return torch.cat([top, mean], -1)


    class LengthsShortByDefault(FaultyUpstream):
        def __init__(self, fault: str = "lengths_short"):
            super().__init__(fault)
"""

# fault -> what the one-line error must say (besides the plugin's name and distribution)
UPSTREAM_FAULTS = {
    "lengths_long": "values in 1..",
    "lengths_short": "expected its frame_lengths() rule",
    "zero_lengths": "values in 1..",
    "float_lengths": "lengths dtype: expected an integer dtype (torch.long), got torch.float32",
    "list_lengths": "lengths: expected an integer tensor [B=2], got list",
    "wrong_size": "hidden_states[0] feature size: expected 4 as declared by hidden_sizes[0], got 3",
    "bdt": "it looks like [B, D, T]",
    "tensor_states": "hidden_states: expected a list with one [B, T, D] tensor per layer, got a torch.float32 tensor",
    "wrong_batch": "hidden_states[0] batch size: expected 2",
    "fewer_layers": "number of hidden_states (layers): expected 3 as declared by hidden_sizes=[4, 4, 4], got 2",
    "tuple": "forward() return value: expected UpstreamOutput(hidden_states, lengths), got tuple",
    "no_layers_declared": "hidden_sizes (one feature size per exposed layer): expected a non-empty list",
}
AGGREGATOR_FAULTS = {
    "wrong_dim": "output shape: expected [B=2, output_dim=8], got [2, 4]",
    "tuple": "forward() return value: expected a tensor [B=2, output_dim=8], got tuple",
}
NAMED = "upstream 'faulty' (distribution 'faulty-plugin', faulty_mod.FaultyUpstream) broke the upstream contract"


@pytest.fixture
def faulty(fake_dist):
    fake_dist("faulty-plugin", "faulty_mod", PLUGIN, {
        "ser_plugins.upstreams": {"faulty": "faulty_mod:FaultyUpstream", "short_by_default": "faulty_mod:LengthsShortByDefault"},
        "ser_plugins.aggregators": {"faulty_pool": "faulty_mod:FaultyPool"},
    })


def _recipe(tmp_path, root, upstream=None, aggregator=None):
    recipe = {
        "name": "faulty", "corpus": {"name": "iemocap", "root": str(root)},
        "upstream": {"name": "faulty", **(upstream or {})},
        "aggregator": {"name": "faulty_pool", **(aggregator or {})},
        "classifier": "linear",
        "training": {"epochs": 1, "batch_size": 16, "patience": None},
        "output": {"tensorboard": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err  # one line, no traceback
    return err[0]


def test_a_good_plugin_passes_everywhere(faulty, tmp_path, tiny_demo_root, capsys):
    assert cli.main(["validate", str(_recipe(tmp_path, tiny_demo_root))]) == 0
    assert "one forward pass on synthetic audio OK" in capsys.readouterr().out
    assert "exact_frames" in check_upstream("faulty")
    assert "padding_invariance" in check_aggregator("faulty_pool")


@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_ser_validate_names_the_plugin_and_the_fault(fault, faulty, tmp_path, tiny_demo_root, capsys):
    path = _recipe(tmp_path, tiny_demo_root, upstream={"fault": fault})
    assert cli.main(["validate", str(path)]) == 2
    line = _error_line(capsys)
    assert NAMED in line and UPSTREAM_FAULTS[fault] in line, line


@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_frozen_extraction_stops_on_the_fault(fault, faulty):
    upstream = registry.create_upstream("faulty", fault=fault)
    rng = np.random.default_rng(0)
    waves = {"a": rng.standard_normal(4000).astype("float32"), "b": rng.standard_normal(2500).astype("float32")}
    with pytest.raises(PluginContractError) as err:
        extract_features(upstream, waves, [0], batch_size=2, progress=False)
    assert NAMED in str(err.value) and "\n" not in str(err.value)
    expected = UPSTREAM_FAULTS[fault].replace("[B=2]", "[B=")  # same text; batch sizes may differ
    assert expected.split(", got")[0] in str(err.value)


@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_the_contract_checker_catches_the_fault(fault, faulty):
    with pytest.raises(ContractCheckError) as err:
        check_upstream("faulty", fault=fault)
    assert "upstream 'faulty'" in str(err.value) and "failed check" in str(err.value)
    assert isinstance(err.value, AssertionError)  # pytest shows it as a failed assertion


@pytest.mark.parametrize("fault", list(AGGREGATOR_FAULTS))
def test_aggregator_faults_are_named(fault, faulty, tmp_path, tiny_demo_root, capsys):
    path = _recipe(tmp_path, tiny_demo_root, aggregator={"fault": fault})
    assert cli.main(["validate", str(path)]) == 2
    line = _error_line(capsys)
    assert "aggregator 'faulty_pool' (distribution 'faulty-plugin'" in line and AGGREGATOR_FAULTS[fault] in line, line
    with pytest.raises(ContractCheckError, match="aggregator 'faulty_pool'"):
        check_aggregator("faulty_pool", fault=fault)


def test_a_run_with_lengths_one_frame_short_stops_before_training(faulty, tmp_path, tiny_demo_root, capsys):
    path = _recipe(tmp_path, tiny_demo_root, upstream={"fault": "lengths_short"})
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--folds", "1", "-q"]) == 2
    line = _error_line(capsys)
    assert NAMED in line and "expected its frame_lengths() rule" in line
    assert not (out / "summary.json").exists() and not (out / "run.json").exists()


def test_ser_predict_checks_the_upstream_too(faulty, tmp_path, tiny_demo_root, capsys):
    path = _recipe(tmp_path, tiny_demo_root)
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--folds", "1", "-q"]) == 0
    wav = sorted(tiny_demo_root.rglob("*.wav"))[0]
    capsys.readouterr()
    assert cli.main(["predict", str(out), str(wav)]) == 0
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    saved["upstream"]["fault"] = "lengths_long"  # the installed plugin changed its behaviour since the run
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert cli.main(["predict", str(out), str(wav)]) == 2
    assert NAMED in _error_line(capsys)


def test_a_fine_tuned_upstream_is_checked_on_every_step(faulty):
    from ser_plugins.model import SERModel, build_head
    from ser_plugins.recipe import FeaturesConfig, PluginSection

    upstream = registry.create_upstream("faulty", fault="lengths_long")
    head, kept = build_head(FeaturesConfig(), PluginSection(name="mean"), PluginSection(name="linear"), upstream, 4)
    model = SERModel(upstream, head, kept)
    with pytest.raises(PluginContractError, match="values in 1.."):
        model(torch.randn(2, 3000), torch.tensor([3000, 2000]))


def test_ser_list_check_runs_every_plugin_and_fails_on_a_broken_one(faulty, capsys):
    assert cli.main(["list", "--check"]) == 1
    out = capsys.readouterr()
    lines = {line.split()[1]: line for line in out.out.splitlines() if not line.startswith("CLASH")}
    assert "ok (ran once)" in lines["faulty"] and "ok (ran once)" in lines["fbank"]
    assert "ok (ran once)" in lines["faulty_pool"] and "ok (ran once)" in lines["mlp"]
    assert "BROKEN" in lines["short_by_default"] and "expected its frame_lengths() rule" in lines["short_by_default"]
    assert "not run: needs option model" in lines["hf"]
    assert "1 broken plugin(s)" in out.err


def test_ser_list_check_passes_when_all_plugins_keep_their_contract(capsys):
    assert cli.main(["list", "upstream", "--check", "--pattern", "fbank"]) == 0
    assert "ok (ran once)" in capsys.readouterr().out


def test_ser_list_check_reports_clashes(fake_dist, capsys):
    source = "from downstreams.aggregators import MeanPooling as Agg\n"
    fake_dist("dist-a", "mod_a", source, {"ser_plugins.aggregators": {"mean": "mod_a:Agg", "pool_x": "mod_a:Agg"}})
    fake_dist("dist-b", "mod_b", source, {"ser_plugins.aggregators": {"pool_x": "mod_b:Agg"}})
    assert cli.main(["list", "aggregator", "--check"]) == 1  # pool_x is ambiguous
    out = capsys.readouterr().out
    assert "CLASH aggregator 'mean' registered by dist-a, ser-plugins: 'mean' means ser-plugins:mean; the other is dist-a:mean" in out
    assert "CLASH aggregator 'pool_x' registered by dist-a, dist-b: ambiguous" in out


def test_a_plugin_that_fails_at_import_is_broken_in_list_check(fake_dist, capsys):
    fake_dist("broken-plugin", "broken_mod", "import not_a_real_dependency_xyz\n",
              {"ser_plugins.aggregators": {"broken_pool": "broken_mod:Agg"}})
    assert cli.main(["list", "aggregator", "--check"]) == 1
    line = [x for x in capsys.readouterr().out.splitlines() if "broken_pool" in x][0]
    assert "BROKEN" in line and "not_a_real_dependency_xyz" in line and "broken-plugin" in line


def test_list_json_shows_versions(faulty, capsys):
    assert cli.main(["list", "upstream", "--json", "--pattern", "faulty"]) == 0
    (spec,) = json.loads(capsys.readouterr().out)
    assert spec["dist"] == "faulty-plugin" and spec["version"] == "0.1"
