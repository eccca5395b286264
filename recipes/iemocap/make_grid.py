#!/usr/bin/env python
"""Write the IEMOCAP study grid of Morais et al. (ICASSP 2022) and the SUPERB-comparable recipes.

    python recipes/iemocap/make_grid.py              # (re)write recipes/iemocap/*.yaml
    python recipes/iemocap/make_grid.py --out DIR    # write them into DIR instead
    python recipes/iemocap/make_grid.py --check      # exit 1 if the files here differ from the output
    python recipes/iemocap/make_grid.py --frame-heads --out recipes/iemocap_frame_heads
                                                     # also the trainable frame-level heads (+60)
    python recipes/iemocap/make_grid.py --lora --out recipes/iemocap_lora
                                                     # also LoRA variants of the fine-tuning cells (+30)

Grid: UPSTREAMS x MODES x AGGREGATORS x CLASSIFIERS (5 x 2 x 3 x 2 = 60 recipes), named
``<upstream>_<mode>_<aggregator>_<classifier>``, plus ``superb_<upstream>`` for each upstream.
``--frame-heads`` adds FRAME_AGGREGATORS (ECAPA-TDNN, CNN + self-attention, BiLSTM + attention:
5 x 2 x 3 x 2 = 60 more recipes, 125 in all); they are not committed, so write them to another
folder (``--check`` on this folder would report them as not generated). A frame-level head costs
far more than pooling per training step; docs/heads.md gives the measured cost per utterance of
each (ECAPA-TDNN at the size below is by far the most expensive head; with a fine-tuned upstream
the upstream still dominates).
``--lora`` adds ``<upstream>_lora_<aggregator>_<classifier>``: each fine-tuning cell with
``finetune.mode: lora`` (LORA_MODES: the ``peft_ser`` preset, LoRA rank 16 on the feed-forward layers,
upstream_lr 5e-4) instead of fine-tuning the whole transformer; 5 x 3 x 2 = 30 more recipes (with
``--frame-heads`` too, 30 more for the frame-level heads). Like the frame heads they are not committed:
write them to another folder. What LoRA costs and saves: docs/self_supervised.md, "Choosing a
fine-tuning mode".
Edit the tables below and re-run; never hand-edit the generated YAML. The output is
deterministic (no dates, fixed order), so a test compares it with the committed files.
See docs/iemocap.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

HERE = Path(__file__).resolve().parent

CORPUS = {"name": "iemocap", "root": "data/IEMOCAP_full_release"}
PROTOCOL = {"name": "session", "dev": "speaker"}
SEED = 0

#: upstream preset (setup.cfg / upstreams/presets.py) -> size class
UPSTREAMS: Dict[str, str] = {
    "wav2vec2_base": "base",
    "wav2vec2_large": "large",
    "hubert_base": "base",
    "hubert_large": "large",
    "wavlm_large": "large",
}

#: Settings shared by every recipe of a mode. Both modes use the same head (softmax-weighted sum
#: of all hidden states, linear projection to 256, then aggregator + classifier), so the only
#: difference between the two cells of a pair is whether the transformer is trained.
MODES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "frozen": {
        "features": {"layer": "weighted_sum", "projection": 256},
        "finetune": {"mode": "frozen"},
        "data": {"cache_dir": "data/feature_cache"},
        "training": {
            "max_steps": None, "epochs": 50, "batch_size": 32, "grad_accum": 1, "optimizer": "adamw", "lr": 1.0e-3,
            "weight_decay": 1.0e-4, "scheduler": "cosine", "warmup_steps": 120, "grad_clip": 5.0,
            "select": "dev_ua", "patience": 10, "max_duration": None, "precision": "fp32",
        },
    },
    "finetune": {
        "features": {"layer": "weighted_sum", "projection": 256},
        "finetune": {"mode": "finetune", "frozen_warmup_steps": 120, "gradient_checkpointing": False},
        "training": {
            "max_steps": None, "epochs": 20, "batch_size": 8, "grad_accum": 4, "optimizer": "adamw", "lr": 1.0e-3,
            "weight_decay": 1.0e-2, "scheduler": "linear", "warmup_steps": 240, "grad_clip": 1.0,
            "select": "dev_ua", "patience": 5, "max_duration": 15.0, "precision": "bf16",
        },
    },
}

#: modes added with --lora: the finetune cells' training, the upstream tuned through LoRA (peft-ser's
#: setting, upstreams/peft_tuning.py PRESETS; usc-sail/peft-ser trains LoRA at 5e-4 for every model)
LORA_MODES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "lora": {
        **MODES["finetune"],
        "finetune": {"mode": "lora", "peft_preset": "peft_ser", "upstream_lr": 5.0e-4, "frozen_warmup_steps": 120,
                     "gradient_checkpointing": False},
    },
}

#: (mode, size) -> settings merged over MODES[mode]
SIZE_SETTINGS: Dict[Tuple[str, str], Dict[str, Dict[str, Any]]] = {
    ("finetune", "base"): {"finetune": {"upstream_lr": 5.0e-5}},
    ("finetune", "large"): {"finetune": {"upstream_lr": 2.0e-5, "gradient_checkpointing": True}},
    ("lora", "large"): {"finetune": {"gradient_checkpointing": True}},
}

AGGREGATORS: Dict[str, Dict[str, Any]] = {
    "mean": {"name": "mean"},
    "stats": {"name": "stats"},
    "attentive_stats": {"name": "attentive_stats", "hidden_dim": 128},
}

#: trainable frame-level heads, added with --frame-heads (docs/heads.md). After the grid's
#: projection to 256: ECAPA-TDNN at the size of SpeechBrain's IEMOCAP recipe (C = 512, Res2Net
#: scale 8, 1536 MFA channels, attention 64, embedding 96); S3PRL's emotion CNN-SA sizes; a
#: one-layer BiLSTM of 128 units per direction.
FRAME_AGGREGATORS: Dict[str, Dict[str, Any]] = {
    "ecapa_tdnn": {"name": "ecapa_tdnn", "channels": 512, "scale": 8, "se_channels": 128,
                   "attention_channels": 64, "embedding_dim": 96},
    "cnn_self_attention": {"name": "cnn_self_attention", "hidden_dim": 80, "kernel_size": 5, "pool": 5,
                           "dropout": 0.4},
    "bilstm_attention": {"name": "bilstm_attention", "hidden_size": 128, "num_layers": 1, "dropout": 0.2},
}
FRAME_HEADER = ("Frame-level head: a trainable network over the frames, not only pooling; what it is and "
                "its cost\nper utterance: docs/heads.md.")

CLASSIFIERS: Dict[str, Dict[str, Any]] = {
    "linear": {"name": "linear"},
    "mlp": {"name": "mlp", "hidden_sizes": [256], "activation": "relu", "dropout": 0.2},
}

#: SUPERB ER (s3prl/downstream/emotion/config.yaml) in this schema; see SUPERB_HEADER.
SUPERB: Dict[str, Any] = {
    "protocol": {"name": "session", "dev": "random", "dev_fraction": 0.2},
    "features": {"layer": "weighted_sum", "projection": 256},
    "finetune": {"mode": "frozen"},
    "data": {"cache_dir": "data/feature_cache"},
    "aggregator": {"name": "mean"},
    "classifier": {"name": "linear"},
    "training": {
        "epochs": 300, "max_steps": 30000, "batch_size": 32, "grad_accum": 1, "optimizer": "adam",
        "lr": 1.0e-4, "weight_decay": 0.0, "scheduler": "none", "warmup_steps": 0, "grad_clip": 1.0,
        "select": "dev_ua", "patience": None, "precision": "fp32",
    },
}

COMMON_HEADER = """\
IEMOCAP 4-class (neu, hap+exc, ang, sad; 5,531 utterances), leave-one-session-out (5 folds).
Generated by recipes/iemocap/make_grid.py: edit the generator and re-run it, not this file.
Reproduction guide, expected accuracy and GPU cost: docs/iemocap.md.
Training set per fold: {train};
{steps} optimiser steps per epoch at an effective batch of 32."""
GRID_TRAIN = ("~3,870 utterances (5,531 - test session - dev speaker)", "~121")
SUPERB_TRAIN = ("~3,540 utterances (80% of the four training sessions)", "~110")

MODE_HEADERS = {
    "frozen": """\
Frozen upstream, SUPERB-style layer use: the upstream runs once per utterance and only the head
is trained (the frozen side of the study's fine-tuning factor).
  features: softmax-weighted sum of all hidden states (SUPERB, Yang et al. 2021) + linear
    projection to 256 (SUPERB ER's projector_dim); same head as the finetune cells.
  training.lr 1e-3, AdamW, weight_decay 1e-4: usual for a small randomly initialised head on
    fixed features; cosine decay after a 120-step (~1 epoch) warm-up.
  batch 32, no accumulation: an effective batch of 32, as in SUPERB ER (4 x 8) and the
    finetune cells.
  epochs 50 (max_steps null: the length is counted in epochs, ~6,000 steps), select dev_ua with
    patience 10 (early stopping on dev UA; IEMOCAP's dev speaker has ~500 utterances): head-only
    training is cheap and converges more slowly than fine-tuning, so more epochs than the
    finetune cells.
  grad_clip 5.0 (project default), fp32: the head is tiny; the stored features are float16.
  No random crop: the stored hidden states were computed on whole utterances.
  Stored features (all layers, float16): ~25 GB (base) / ~64 GB (large) of RAM for ~7 h of
    audio; see docs/iemocap.md (features.keep_layers, data.cache_dir).
  data.cache_dir: the upstream's features are computed once and shared on disk by every frozen
    head of this upstream (and by re-runs); mean-pooling heads store one mean per layer.""",
    "finetune": """\
Fine-tuned upstream: the transformer (and the CNN-to-transformer projection) is trained, the CNN
feature encoder stays frozen -- the usual wav2vec 2.0 / HuBERT fine-tuning setting (Baevski et
al. 2020; Wang et al. 2021) and Morais et al.'s fine-tuned condition.
  finetune.upstream_lr 5e-5 (base) / 2e-5 (large) vs training.lr 1e-3 for the head: pre-trained
    weights move slowly, the freshly initialised head (layer weights, projection, pooling,
    classifier) fast; larger models are usually fine-tuned with smaller rates.
  finetune.frozen_warmup_steps 120 (~1 epoch): the head trains alone first so that its random
    initial gradients do not reach the pre-trained transformer.
  scheduler linear with 240 warm-up steps (~10% of the 20-epoch budget): BERT / wav2vec 2.0
    fine-tuning practice; the upstream starts while its rate is still ramping up.
  batch 8 x grad_accum 4 = effective 32 (fits a 24 GB GPU with 15 s crops; large models use
    gradient checkpointing, which trades ~30% more compute for activation memory).
  training.max_duration 15 s: random crop of the few longer training utterances; dev and test
    are scored at full length.
  grad_clip 1.0, AdamW weight_decay 0.01: fairseq / Hugging Face fine-tuning defaults.
  precision bf16: mixed precision on Ampere or newer GPUs (use -o training.precision=fp16 or
    fp32 on older cards).
  epochs 20 (max_steps null), select dev_ua with patience 5 (early stopping on dev UA):
    fine-tuned SER models peak after a few epochs and then overfit the ~3.9k training utterances.
  The checkpoint's own dropout and time-masking settings (its config.json) stay on while
  training; the hf upstream sets layerdrop to 0.""",
    "lora": """\
LoRA variant of the fine-tuning cell (make_grid.py --lora): the pre-trained weights stay frozen and
LoRA layers train instead (Hu et al. 2022), everything else as in the finetune cell.
  finetune.mode lora, peft_preset peft_ser: usc-sail/peft-ser's setting (Feng & Narayanan 2023):
    rank 16 on the two feed-forward projections of every transformer layer, alpha 1, no LoRA
    dropout; 1.5 M (base) / 3.9 M (large) trainable encoder parameters instead of ~90 M /
    ~300 M. LoRA starts as the identity: the pre-trained model's outputs are unchanged at step 0.
  finetune.upstream_lr 5e-4 for every size: peft-ser's rate (LoRA's few weights need a larger
    rate than full fine-tuning); the head keeps training.lr 1e-3.
  finetune.frozen_warmup_steps 120, linear schedule with 240 warm-up steps, batch 8 x 4, 15 s
    crops, bf16, grad_clip 1.0, 20 epochs, select dev_ua, patience 5: the finetune cell's, so
    the pair differs only in what trains.
  Gradient checkpointing for large models, as in the finetune cell: the backward pass still runs
    through every layer, so activations cost what they cost in fine-tuning; the saving is the
    gradients and optimiser state of the frozen weights.
  The checkpoint keeps only the LoRA weights and the head (a few MB); ser export merges LoRA into
  the weights (exact).""",
}

SUPERB_HEADER = """\
SUPERB-comparable setting (ER task; s3prl/downstream/emotion/config.yaml), for direct comparison
with published SUPERB numbers, which are test ACCURACY (= our WA) averaged over the 5 folds:
  frozen upstream, softmax-weighted sum of all hidden states, Linear(D, 256) projector, mean
    pooling, linear classifier (s3prl UtteranceLevel: MeanPooling + one linear layer).
  protocol.dev: random, dev_fraction 0.2 -- SUPERB's valid_ratio 0.2: a random 20% of the four
    training sessions' utterances. It leaks the training speakers into dev (early stopping is
    optimistic); the grid recipes use the speaker-independent dev instead.
  optimizer adam, lr 1e-4, weight_decay 0, no scheduler, grad_clip 1.0: as in SUPERB.
  SUPERB trains 30,000 optimiser steps of train_batch_size 4 x gradient_accumulate_steps 8 = 32
    utterances. Here: batch 32, grad_accum 1, max_steps 30000 -- the same gradient per step (the
    loss is a batch mean and the head has no batch-dependent layer), 8x fewer micro-steps.
    epochs 300 only bounds the loop (~110 steps/epoch: 30,000 steps is ~270 epochs); select
    dev_ua with patience null: the best dev epoch is kept, no early stopping, as in SUPERB.
Not expressible in the schema (see docs/iemocap.md): SUPERB picks the checkpoint with the best dev
ACCURACY, evaluated every 1,000 steps; the runner picks the best dev UA, evaluated every epoch.
The random dev split is drawn by the runner (seed + fold), not s3prl's torch.manual_seed(0)."""

SECTION_ORDER = ("name", "description", "seed", "corpus", "protocol", "upstream", "features", "finetune",
                 "aggregator", "classifier", "training", "data", "output")
FLOW_SECTIONS = ("corpus", "protocol", "upstream", "aggregator", "classifier", "output")


def merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge (``extra`` wins); inputs are not modified."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def scalar(value: Any) -> str:
    """One YAML value in flow style, readable by plain ``yaml.safe_load`` (floats as ``1.0e-04``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-3].strip() if text.endswith("\n...") or text.endswith("...") else text


def render(recipe: Dict[str, Any], header: str) -> str:
    """The recipe as YAML: comment header, one-line plugin sections, block-style fixed sections."""
    lines = [("# " + line).rstrip() for line in header.splitlines()]
    for key in SECTION_ORDER:
        if key not in recipe:
            continue
        value = recipe[key]
        if isinstance(value, dict) and key not in FLOW_SECTIONS:
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {scalar(v)}" for k, v in value.items())
        else:
            lines.append(f"{key}: {scalar(value)}")
    unknown = set(recipe) - set(SECTION_ORDER)
    if unknown:
        raise ValueError(f"sections without a place in SECTION_ORDER: {sorted(unknown)}")
    return "\n".join(lines) + "\n"


def grid_recipe(upstream: str, mode: str, aggregator: str, classifier: str) -> Tuple[str, Dict[str, Any], str]:
    """``(name, recipe, header)`` of one grid cell."""
    size = UPSTREAMS[upstream]
    name = f"{upstream}_{mode}_{aggregator}_{classifier}"
    frame_head = aggregator in FRAME_AGGREGATORS
    settings = merge({**MODES, **LORA_MODES}[mode], SIZE_SETTINGS.get((mode, size), {}))
    recipe = {
        "name": name,
        "description": f"Morais et al. 2022 grid: {upstream}, {mode}, {aggregator}, {classifier}",
        "seed": SEED,
        "corpus": dict(CORPUS),
        "protocol": dict(PROTOCOL),
        "upstream": {"name": upstream},
        **settings,
        "aggregator": dict(FRAME_AGGREGATORS[aggregator] if frame_head else AGGREGATORS[aggregator]),
        "classifier": dict(CLASSIFIERS[classifier]),
        "output": {"dir": f"runs/iemocap/{name}"},
    }
    cell = f"Study cell: {upstream} ({size}) / {mode} / {aggregator} pooling / {classifier} classifier."
    if frame_head:
        cell = "\n".join([f"Study cell: {upstream} ({size}) / {mode} / {aggregator} head / {classifier} classifier.",
                          FRAME_HEADER])
    common = COMMON_HEADER.format(train=GRID_TRAIN[0], steps=GRID_TRAIN[1])
    header = "\n".join([common, "Dev set: one held-out training speaker (speaker-independent).", "",
                        cell, MODE_HEADERS[mode]])
    return name, recipe, header


def superb_recipe(upstream: str) -> Tuple[str, Dict[str, Any], str]:
    """``(name, recipe, header)`` of the SUPERB-comparable recipe for ``upstream``."""
    name = f"superb_{upstream}"
    recipe = merge({
        "name": name,
        "description": f"SUPERB ER setting: {upstream} frozen, weighted sum, projection 256, mean, linear",
        "seed": SEED,
        "corpus": dict(CORPUS),
        "upstream": {"name": upstream},
        "output": {"dir": f"runs/iemocap/{name}"},
    }, SUPERB)
    common = COMMON_HEADER.format(train=SUPERB_TRAIN[0], steps=SUPERB_TRAIN[1])
    header = "\n".join([common, "", SUPERB_HEADER])
    return name, recipe, header


def generate(frame_heads: bool = False, lora: bool = False) -> List[Tuple[str, str]]:
    """``[(file name, YAML text)]`` for every recipe, in a fixed order (``frame_heads``: add FRAME_AGGREGATORS;
    ``lora``: add LORA_MODES)."""
    files = []
    aggregators = list(AGGREGATORS) + (list(FRAME_AGGREGATORS) if frame_heads else [])
    modes = list(MODES) + (list(LORA_MODES) if lora else [])
    for upstream in UPSTREAMS:
        for mode in modes:
            for aggregator in aggregators:
                for classifier in CLASSIFIERS:
                    name, recipe, header = grid_recipe(upstream, mode, aggregator, classifier)
                    files.append((f"{name}.yaml", render(recipe, header)))
    for upstream in UPSTREAMS:
        name, recipe, header = superb_recipe(upstream)
        files.append((f"{name}.yaml", render(recipe, header)))
    names = [f for f, _ in files]
    if len(set(names)) != len(names):
        raise ValueError("duplicate recipe names")
    return files


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this script's folder)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from the output")
    parser.add_argument("--frame-heads", action="store_true",
                        help="also the trainable frame-level heads (ecapa_tdnn, cnn_self_attention, bilstm_attention)")
    parser.add_argument("--lora", action="store_true",
                        help="also LoRA variants of the fine-tuning cells (<upstream>_lora_<aggregator>_<classifier>)")
    args = parser.parse_args(argv)
    files = generate(frame_heads=args.frame_heads, lora=args.lora)
    expected = {name for name, _ in files}
    present = sorted(args.out.glob("*.yaml")) if args.out.is_dir() else []
    stale = [p.name for p in present if p.name not in expected]
    if args.check:
        differ = [name for name, text in files
                  if not (args.out / name).is_file() or (args.out / name).read_text() != text]
        for name in differ:
            print(f"differs or missing: {args.out / name}")
        for name in stale:
            print(f"not generated: {args.out / name}")
        print(f"{len(files) - len(differ)} of {len(files)} recipes up to date in {args.out}")
        return 1 if differ or stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        path = args.out / name
        if path.is_file() and path.read_text() == text:
            print(f"unchanged {path}")
            continue
        path.write_text(text)
        print(f"wrote     {path}")
    for name in stale:
        print(f"warning: {args.out / name} is not generated by this script (remove it if obsolete)")
    grid = len(files) - len(UPSTREAMS)
    print(f"{len(files)} recipes ({grid} grid + {len(UPSTREAMS)} SUPERB) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
