"""benchmarks/device_check.py runs end to end on CPU (--smoke: tiny models) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")
pytest.importorskip("peft", reason="pip install 'ser-plugins[peft]'")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_device_check_smoke_writes_every_section(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "device_check.json"
    rc = module.main(
        [
            "--device",
            "cpu",
            "--smoke",
            "--sections",
            "finetune,extract",
            "--archs",
            "wavlm_large",
            "--configs",
            "lora,finetune+gc",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["sections"]["finetune"]["rows"]
    assert [(r["mode"], r["gradient_checkpointing"]) for r in rows] == [("lora", False), ("finetune", True)]
    assert all(r["finite_loss"] and r["utterances"] == r["batch"] * r["steps"] > 0 for r in rows)
    assert rows[0]["trainable"] < rows[1]["trainable"]  # LoRA trains fewer weights than fine-tuning
    extract = result["sections"]["extract"]
    assert extract["batched (exact)"]["batches"] < extract["one at a time"]["batches"]
    assert extract["max_abs_diff"] < 1e-4  # the exact path: batched equals one at a time
    printed = capsys.readouterr().out
    assert "| wavlm_large | lora | no |" in printed and "max |batched (exact) - one at a time|" in printed
