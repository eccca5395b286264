"""A head's ``training_defaults`` fill the training keys a recipe leaves unset; the recipe's own keys win."""
from __future__ import annotations

import copy
import itertools

import pytest

from helpers import recipe_for
from ser_plugins.recipe import RecipeError, dump_recipe, load_recipe

_UNIQUE = itertools.count()

PLUGIN = """
from ser_plugins.plugins.contracts import Aggregator
import torch

class Pool(Aggregator):
    training_defaults = {DEFAULTS}

    def __init__(self, input_dim):
        super().__init__()
        self.output_dim = input_dim
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, features, lengths):
        mask = (torch.arange(features.shape[1])[None] < lengths[:, None]).to(features.dtype)
        return self.w * (features * mask[..., None]).sum(1) / lengths[:, None].to(features.dtype)
"""


@pytest.fixture
def head_with(fake_dist, tiny_demo_root):
    """A recipe whose aggregator (a fake distribution) declares ``defaults``; returns a loader."""
    def make(defaults: str, training=None):
        n = next(_UNIQUE)  # module names unique in the process: sys.modules keeps imported ones
        fake_dist(f"defaults-head-{n}", f"defaults_head_{n}", PLUGIN.replace("{DEFAULTS}", defaults),
                  {"ser_plugins.aggregators": {f"pool_{n}": f"defaults_head_{n}:Pool"}})
        data = copy.deepcopy(recipe_for(tiny_demo_root, name="defaults"))
        data["aggregator"] = {"name": f"pool_{n}"}
        data["training"] = dict(training or {})
        return data

    return make


def test_unset_training_keys_take_the_heads_defaults(head_with):
    recipe = load_recipe(head_with('{"lr": 0.001, "select": "dev_loss", "patience": 7}'))
    assert (recipe.training.lr, recipe.training.select, recipe.training.patience) == (0.001, "dev_loss", 7)
    assert recipe.training.max_steps == 2500  # what the head leaves alone keeps the global default


def test_the_recipes_own_keys_win(head_with):
    recipe = load_recipe(head_with('{"lr": 0.001, "select": "dev_loss", "patience": 7}',
                                   training={"lr": 0.05, "select": "last"}))
    assert recipe.training.lr == 0.05
    assert recipe.training.select == "last"
    assert recipe.training.patience is None  # early stopping belongs to the head's selection, not to 'last'


def test_an_override_wins_too(head_with):
    recipe = load_recipe(head_with('{"lr": 0.001}'), ["training.lr=0.2"])
    assert recipe.training.lr == 0.2


def test_the_resolved_recipe_written_to_a_run_keeps_the_applied_values(head_with):
    recipe = load_recipe(head_with('{"lr": 0.001, "warmup_steps": 10}'))
    assert "lr: 0.001" in dump_recipe(recipe)  # recipe.yaml of a run says what ran
    again = load_recipe(recipe.to_dict())  # --resume and fold jobs reload it
    assert (again.training.lr, again.training.warmup_steps) == (0.001, 10)


@pytest.mark.parametrize("defaults, words", [
    ('{"learning_rate": 0.001}', "unknown training key 'learning_rate'"),
    ('{"lr": -1.0}', "training.lr must be > 0"),
    ('["lr"]', "must be a mapping"),
])
def test_a_plugins_bad_defaults_are_named(head_with, defaults, words):
    with pytest.raises(RecipeError) as err:
        load_recipe(head_with(defaults))
    assert words in str(err.value)
    assert "pool_" in str(err.value)


def test_frame_level_networks_bring_their_schedule_and_pooling_heads_do_not(tiny_demo_root):
    base = copy.deepcopy(recipe_for(tiny_demo_root, name="builtin"))
    base["training"] = {}
    for aggregator in ("ecapa_tdnn", "cnn_self_attention", "bilstm_attention"):
        recipe = load_recipe({**base, "aggregator": {"name": aggregator}})
        assert recipe.training.lr == 0.001, aggregator
        assert recipe.training.max_duration == (1.5 if aggregator == "ecapa_tdnn" else None), aggregator
    for aggregator in ("mean", "stats", "attentive_stats", "self_attention"):
        recipe = load_recipe({**base, "aggregator": {"name": aggregator}})
        assert recipe.training.lr == 0.01, aggregator
        assert recipe.training.max_duration is None, aggregator


def test_a_recipe_can_turn_ecapas_training_crops_off(tiny_demo_root):
    base = copy.deepcopy(recipe_for(tiny_demo_root, name="builtin"))
    base["training"] = {"max_duration": None}
    recipe = load_recipe({**base, "aggregator": {"name": "ecapa_tdnn"}})
    assert recipe.training.max_duration is None
    assert recipe.training.lr == 0.001


def test_the_cosine_classifier_brings_its_learning_rate(tiny_demo_root):
    base = copy.deepcopy(recipe_for(tiny_demo_root, name="cosine"))
    base["training"] = {}
    recipe = load_recipe({**base, "aggregator": {"name": "mean"}, "classifier": {"name": "cosine"}})
    assert recipe.training.lr == 0.001
    recipe = load_recipe({**base, "aggregator": {"name": "mean"}, "classifier": {"name": "cosine"},
                          "training": {"lr": 0.02}})
    assert recipe.training.lr == 0.02


def test_ser_list_check_shows_a_heads_training_defaults(capsys):
    from ser_plugins import cli

    assert cli.main(["list", "aggregator", "--check", "--pattern", "*_*"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert "training defaults: lr=0.001" in lines["cnn_self_attention"]
    assert "training defaults" not in lines["attentive_stats"]


def test_resume_names_what_changed_in_the_recipe(fast_recipe, tmp_path):
    from ser_plugins.errors import RunError
    from ser_plugins.training.runner import recipe_differences, run_recipe

    out = tmp_path / "run"
    run_recipe(load_recipe(fast_recipe), str(out), folds=["Session1"], progress=False)
    changed = load_recipe(fast_recipe, ["training.lr=0.5", "training.batch_size=4"])
    with pytest.raises(RunError) as err:
        run_recipe(changed, str(out), resume=True, progress=False)
    assert "training.lr: 0.01 -> 0.5" in str(err.value)
    assert "training.batch_size" in str(err.value)
    assert recipe_differences({"a": {"b": 1}, "c": 2}, {"a": {"b": 1}, "c": 2}) == []
    assert recipe_differences({"a": {"b": 1}}, {"a": {"b": 2}, "d": 3}) == ["a.b: 1 -> 2", "d: None -> 3"]
