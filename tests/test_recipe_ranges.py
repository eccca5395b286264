"""Every numeric recipe value has a declared valid range, checked before any work (issue: reliability II)."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from ser_plugins import cli
from ser_plugins.recipe import RecipeError, load_recipe, numeric_fields, recipe_json_schema

BASE = {"corpus": {"name": "iemocap", "root": "x"}, "upstream": "fbank", "aggregator": "stats", "classifier": "mlp"}


def _bounds(info):
    lo = hi = None
    lo_strict = hi_strict = False
    for meta in info.metadata:
        if getattr(meta, "ge", None) is not None:
            lo = meta.ge
        if getattr(meta, "gt", None) is not None:
            lo, lo_strict = meta.gt, True
        if getattr(meta, "le", None) is not None:
            hi = meta.le
        if getattr(meta, "lt", None) is not None:
            hi, hi_strict = meta.lt, True
    return lo, lo_strict, hi, hi_strict


def _invalid_values(info):
    """Values outside the declared range: non-finite, below the lower bound, above the upper one, huge."""
    is_int = "int" in str(info.annotation) and "float" not in str(info.annotation)
    lo, lo_strict, hi, hi_strict = _bounds(info)
    assert lo is not None and hi is not None, "every numeric key declares both bounds"
    values = [math.nan, math.inf, -math.inf, -1e30, 1e30]
    values.append(lo if lo_strict else (lo - 1 if is_int else lo - abs(lo) * 0.5 - 1e-3))
    values.append(hi if hi_strict else (hi + 1 if is_int else hi * 2 + 1))
    return values


CASES = [(section, key, value) for section, key, info in numeric_fields() for value in _invalid_values(info)]


def test_numeric_keys_are_all_covered():
    keys = {(s, k) for s, k, _ in numeric_fields()}
    for key in [("training", "max_steps"), ("training", "grad_clip"), ("training", "patience"), ("training", "lr"),
                ("training", "weight_decay"), ("training", "max_duration"), ("training", "max_batch_seconds"),
                ("training", "batch_size"), ("protocol", "dev_fraction"), ("finetune", "layer_decay"),
                ("data", "extract_batch_seconds")]:
        assert key in keys


@pytest.mark.parametrize("section,key,value", CASES, ids=[f"{s}.{k}={v!r}" for s, k, v in CASES])
def test_an_out_of_range_value_is_a_clear_error(section, key, value):
    with pytest.raises(RecipeError) as err:
        load_recipe({**BASE, section: {key: value}}, check_plugins=False)
    assert f"{section}.{key}" in str(err.value)


@pytest.mark.parametrize("override,words", [
    ("training.max_steps=-2", ["training.max_steps must be >= 1, got -2"]),
    ("training.grad_clip=-1", ["training.grad_clip must be > 0"]),
    ("training.patience=-3", ["training.patience must be >= 1"]),
    ("training.max_batch_seconds=-1", ["training.max_batch_seconds must be > 0"]),
    ("training.weight_decay=-5", ["training.weight_decay must be >= 0"]),
    ("training.max_duration=-1", ["training.max_duration must be > 0"]),
    ("training.lr=.nan", ["training.lr must be a finite number"]),
    ("training.lr=.inf", ["training.lr must be a finite number"]),
    ("training.lr=1e30", ["training.lr must be <= 10", "1e+30"]),
])
def test_bad_numbers_stop_run_and_validate_before_anything_is_written(tmp_path, capsys, tiny_demo_root, override,
                                                                       words):
    from helpers import recipe_for

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root)))
    out = tmp_path / "out"
    for argv in (["run", str(path), "-o", override, "--out", str(out), "-q"], ["validate", str(path), "-o", override]):
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
        for w in words:
            assert w in err, (w, err)
    assert not out.exists()


def test_schema_command_prints_a_json_schema_with_ranges(capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    lr = schema["$defs"]["TrainingConfig"]["properties"]["lr"]
    assert lr["exclusiveMinimum"] == 0 and lr["maximum"] == 10
    assert set(schema["required"]) == {"corpus", "upstream", "aggregator", "classifier"}
    assert schema == recipe_json_schema()
    modes = schema["$defs"]["FinetuneConfig"]["properties"]["mode"]
    assert set(modes["enum"]) == {"frozen", "finetune", "full", "top_n", "lora", "adapter"}
