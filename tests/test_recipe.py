"""Recipes are validated before any work: unknown keys, wrong types, bad plugin options."""
import pytest

from ser_plugins.recipe import RecipeError, apply_overrides, load_recipe

BASE = {"corpus": {"name": "iemocap", "root": "x"}, "upstream": "fbank", "aggregator": "stats", "classifier": "mlp"}


def test_defaults_are_filled_and_short_plugin_form_accepted():
    r = load_recipe(BASE)
    assert r.upstream.name == "fbank" and r.upstream.options == {}
    assert (r.training.max_steps, r.training.epochs, r.training.lr) == (2500, None, 0.01)
    assert (r.training.scheduler, r.training.select) == ("cosine", "last")
    assert r.protocol.dev == "none" and r.finetune.mode == "frozen"  # auto: nothing reads a dev set


def test_frozen_precomputed_features_are_standardised_by_default():
    assert load_recipe(BASE).features.normalize == "global"
    assert load_recipe({**BASE, "features": {"normalize": None}}).features.normalize is None
    assert load_recipe({**BASE, "features": {"normalize": "speaker"}}).features.normalize == "speaker"
    # the statistics of a training upstream go stale, and unprecomputed features have none: raw by default
    assert load_recipe({**BASE, "finetune": {"mode": "full"}}).features.normalize is None
    assert load_recipe({**BASE, "data": {"precompute": False}}).features.normalize is None
    assert load_recipe(BASE, ["finetune.mode=full"]).features.normalize is None


@pytest.mark.parametrize("bad, words", [
    ({"trainig": {}}, ["trainig", "did you mean 'training'"]),
    ({"training": {"epoch": 3}}, ["training.epoch", "did you mean 'epochs'"]),
    ({"training": {"epochs": "ten"}}, ["training.epochs", "expected int"]),
    ({"training": {"class_weights": 1}}, ["training.class_weights", "expected bool"]),
    ({"training": {"epochs": True}}, ["training.epochs", "boolean"]),
    ({"features": {"layer": "middle"}}, ["features.layer"]),
    ({"finetune": {"mode": "partial"}}, ["finetune.mode", "frozen"]),
    ({"upstream": {"name": "fbank", "n_mel": 3}}, ["upstream", "n_mel", "n_mels"]),
    ({"aggregator": "meen"}, ["aggregator", "meen", "Did you mean: mean"]),
    ({"features": {"normalize": "speaker"}, "finetune": {"mode": "full"}}, ["frozen"]),
])
def test_bad_recipes_name_the_key(bad, words):
    with pytest.raises(RecipeError) as err:
        load_recipe({**BASE, **bad})
    for w in words:
        assert w in str(err.value)


def test_missing_plugin_section():
    data = dict(BASE)
    del data["classifier"]
    with pytest.raises(RecipeError, match="classifier"):
        load_recipe(data)


def test_overrides_parse_yaml_values_and_expand_short_plugin_form():
    data = apply_overrides(BASE, ["training.epochs=5", "training.lr=1e-4", "upstream.n_mels=40", "features.layer=3"])
    assert data["training"] == {"epochs": 5, "lr": 1e-4}
    assert data["upstream"] == {"name": "fbank", "n_mels": 40}
    assert data["features"]["layer"] == 3
    with pytest.raises(RecipeError):
        apply_overrides(BASE, ["training.epochs"])


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
