"""Device check for ONE NVIDIA GPU (issue 28): the GPU tests, fine-tuning throughput, batched frozen extraction.

A prepared script for a session that has a GPU for a few minutes: every section has a time budget
(the whole run stays under ``--budget`` seconds, 420 by default), prints its rows as they come
(flushed) and records them, so a run cut short still leaves partial results. No internet: every
model is built from a ``transformers`` config in code, with random weights (seed 0).

Sections:

(a) ``tests``: the tests that run on CUDA -- the project has no ``gpu`` marker; the CUDA cases are
    the ``device`` parametrisations (``tests/test_frame_models.py -k cuda``: the frame heads under
    bf16 autocast on the GPU) -- through ``python -m pytest -q -n 0``; pass/fail and the summary line.
(b) ``finetune``: fine-tuning throughput (utterances/s over timed steps) and peak memory
    (``torch.cuda.max_memory_allocated``) of HuBERT-large and WavLM-large (24 layers, 1024 wide,
    ~316 M parameters), random weights, through the project's path (``TransformersEncoderUpstream``,
    the mode set as ``model.build_upstream`` sets it, ``build_head`` with the study grid's head:
    weighted sum, projection 256, mean, linear; ``trainer.build_optimizer``; the trainer's step:
    bf16 autocast, backward, clip 1.0, AdamW step). Batches of ``--batch`` utterances drawn from
    IEMOCAP-like lengths (2-7 s uniform, mean 4.5 s, seed 0). Configurations: ``finetune``
    (CNN frozen) with and without gradient checkpointing, ``lora`` (peft_ser preset) with and without.
(c) ``extract``: frozen extraction of HuBERT-base (random, ``HubertConfig()``) through
    ``ser_plugins.data.extract.extract_features``, batched on the exact path (the masked-GroupNorm
    CNN on the padded batch, the accelerator path) vs one utterance at a time: utterances/s and the
    largest difference over every hidden state's valid frames (float32).

    python benchmarks/device_check.py                       # on the GPU machine; JSON to $OUT/device_check.json
    python benchmarks/device_check.py --device cpu --smoke  # tiny models, seconds: checks the script end to end
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

SAMPLE_RATE = 16000
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
#: the large checkpoints' architecture (hubert-large-ll60k, wavlm-large): pre-LN, layer-norm CNN
LARGE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "conv_bias": True,
}


def say(*parts: Any) -> None:
    print(*parts, flush=True)


class Clock:
    """The whole run's deadline and each section's share of it."""

    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.budget = float(budget)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def section(self, share: float) -> float:
        """A section's deadline (monotonic time): ``share`` of the budget, never past the run's end."""
        return min(time.monotonic() + share, self.start + self.budget)


def machine_facts() -> Dict[str, Any]:
    import platform

    import torch

    facts: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import transformers

        facts["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import peft

        facts["peft"] = peft.__version__
    except ImportError:
        facts["peft"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_version=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    return facts


# --- (a) the CUDA tests -----------------------------------------------------------------------
TEST_SELECTION = ["tests/test_frame_models.py", "-k", "cuda"]


def run_tests(timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *TEST_SELECTION]
    say("$", " ".join(cmd))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=max(5.0, timeout))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-2000:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-2000:]
        say(f"tests: TIMEOUT after {timeout:.0f} s")
        return {"status": "timeout", "seconds": time.perf_counter() - start, "tail": str(tail)}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    status = "pass" if proc.returncode == 0 else ("no tests" if proc.returncode == 5 else "FAIL")
    say(f"tests: {status} (rc {proc.returncode}, {time.perf_counter() - start:.0f} s): {summary}")
    if proc.returncode not in (0, 5):
        say(proc.stdout[-4000:], proc.stderr[-2000:])
    return {
        "status": status,
        "returncode": proc.returncode,
        "summary": summary,
        "seconds": time.perf_counter() - start,
        "tail": proc.stdout[-3000:],
    }


# --- (b) fine-tuning throughput -----------------------------------------------------------------
def base_encoder(arch: str, smoke: bool):
    """A randomly initialised encoder (seed 0) in float32 on CPU: ``arch`` hubert_large / wavlm_large / hubert_base."""
    import torch
    from transformers import HubertConfig, HubertModel, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    size = dict(TINY) if smoke else (dict(LARGE) if arch.endswith("large") else {})
    if smoke and arch.endswith("large"):
        size.update(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    size["layerdrop"] = 0.0
    if arch.startswith("wavlm"):
        return WavLMModel(WavLMConfig(**size))
    return HubertModel(HubertConfig(**size))


def tuned_upstream(encoder, arch: str, keys: Dict[str, Any], gradient_checkpointing: bool):
    """The ``hf`` upstream around ``encoder`` with the fine-tuning mode set as ``model.build_upstream`` sets it."""
    from ser_plugins.recipe import FinetuneConfig
    from upstreams.hf import TransformersEncoderUpstream

    large = arch.endswith("large")
    upstream = TransformersEncoderUpstream(encoder, normalize=large, use_attention_mask=large)
    finetune = FinetuneConfig(**keys, gradient_checkpointing=gradient_checkpointing)
    if finetune.mode in ("lora", "adapter"):
        upstream.peft_options = finetune.peft_options()
    upstream.set_finetune(finetune.mode, top_n=finetune.top_n)
    if finetune.mode != "frozen" and finetune.gradient_checkpointing:
        upstream.enable_gradient_checkpointing()
    return upstream, finetune


def iemocap_like(count: int, low: float, high: float, seed: int = 0) -> List[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [int(s * SAMPLE_RATE) for s in rng.uniform(low, high, size=count)]


def finetune_config(
    encoder,
    arch: str,
    keys: Dict[str, Any],
    gc: bool,
    device: str,
    precision: str,
    lengths: List[int],
    batch: int,
    warmup: int,
    steps: int,
    deadline: float,
) -> Dict[str, Any]:
    """Train ``steps`` timed steps (after ``warmup``) of one configuration; throughput and peak memory."""
    import numpy as np
    import torch
    from torch import nn

    from ser_plugins.model import SERModel, build_head
    from ser_plugins.recipe import FeaturesConfig, PluginSection, TrainingConfig
    from ser_plugins.training.trainer import autocast, build_optimizer

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    upstream, finetune = tuned_upstream(copy.deepcopy(encoder), arch, keys, gc)
    head, kept = build_head(
        FeaturesConfig(layer="weighted_sum", projection=256),
        PluginSection(name="mean"),
        PluginSection(name="linear"),
        upstream,
        4,
    )
    model = SERModel(upstream, head, kept).to(device)
    training = TrainingConfig(lr=1e-3, weight_decay=1e-2, grad_clip=1.0, precision=precision)
    optimizer = build_optimizer(model, training, finetune)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    rng = np.random.default_rng(1)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    weights_bytes = torch.cuda.memory_allocated() if cuda else 0

    def one_step() -> Dict[str, float]:
        pick = rng.choice(len(lengths), size=batch, replace=False)
        lens = [lengths[i] for i in pick]
        wavs = torch.zeros(batch, max(lens))
        for row, n in enumerate(lens):
            wavs[row, :n] = 0.1 * torch.randn(n)
        wavs, lens_t = wavs.to(device), torch.tensor(lens, device=device)
        targets = torch.tensor([i % 4 for i in range(batch)], device=device)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device, precision):
            logits = model(wavs, lens_t)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return {
            "seconds": time.perf_counter() - start,
            "audio": sum(lens) / SAMPLE_RATE,
            "padded": batch * max(lens) / SAMPLE_RATE,
            "loss": float(loss.detach()),
        }

    for _ in range(warmup):
        one_step()
    timed: List[Dict[str, float]] = []
    for _ in range(steps):
        if time.monotonic() > deadline and timed:
            break
        timed.append(one_step())
    seconds = sum(t["seconds"] for t in timed)
    per_step = sorted(t["seconds"] for t in timed)
    out = {
        "arch": arch,
        "mode": keys["mode"],
        "gradient_checkpointing": gc,
        "precision": precision,
        "trainable": trainable,
        "total": total,
        "batch": batch,
        "steps": len(timed),
        "warmup_steps": warmup,
        "utterances": batch * len(timed),
        "audio_s": sum(t["audio"] for t in timed),
        "padded_s": sum(t["padded"] for t in timed),
        "seconds": seconds,
        "utterances_per_s": batch * len(timed) / seconds if seconds else None,
        "step_median_s": per_step[len(per_step) // 2] if per_step else None,
        "step_min_s": per_step[0] if per_step else None,
        "step_max_s": per_step[-1] if per_step else None,
        "finite_loss": all(np.isfinite(t["loss"]) for t in timed),
    }
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["weights_gib"] = weights_bytes / 2**30
    return out


#: configuration name -> (FinetuneConfig keys, gradient checkpointing); the grid's large-model settings
FINETUNE_CONFIGS = {
    "finetune": ({"mode": "finetune", "upstream_lr": 2e-5}, False),
    "finetune+gc": ({"mode": "finetune", "upstream_lr": 2e-5}, True),
    "lora": ({"mode": "lora", "peft_preset": "peft_ser", "upstream_lr": 5e-4}, False),
    "lora+gc": ({"mode": "lora", "peft_preset": "peft_ser", "upstream_lr": 5e-4}, True),
}
ARCHS = ("hubert_large", "wavlm_large")


def finetune_row(r: Dict[str, Any]) -> str:
    peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "n/a"
    rate = f"{r['utterances_per_s']:.1f}" if r.get("utterances_per_s") else "n/a"
    step = f"{r['step_median_s']:.3f} (min {r['step_min_s']:.3f}, max {r['step_max_s']:.3f})" if r["steps"] else "n/a"
    return (
        f"| {r['arch']} | {r['mode']} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
        f"{r['trainable'] / 1e6:.2f} M of {r['total'] / 1e6:.1f} M | {r['batch']} | "
        f"{r['warmup_steps']} + {r['steps']} | {r['utterances']} | {r['audio_s']:.0f} | {step} | {rate} | {peak} |"
    )


FINETUNE_HEADER = [
    "| model | mode | grad. checkpointing | trainable | batch | steps (warm-up + timed) | utterances | "
    "audio (s) | step (s) | utterances/s | peak GPU memory (GiB) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def run_finetune(args: argparse.Namespace, deadline: float, record: Callable[[Dict[str, Any]], None]) -> None:
    lengths = iemocap_like(64, args.low, args.high)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    configs = [FINETUNE_CONFIGS[c.strip()] for c in args.configs.split(",") if c.strip()]
    say(
        f"fine-tuning: {', '.join(archs)}, random weights, precision {args.precision}, batches of {args.batch} "
        f"drawn from 64 lengths {args.low:g}-{args.high:g} s (mean {sum(lengths) / len(lengths) / SAMPLE_RATE:.2f} s)"
    )
    say("\n".join(FINETUNE_HEADER))
    for arch in archs:
        if time.monotonic() > deadline:
            say(f"| {arch} | skipped: section budget spent |")
            record({"arch": arch, "skipped": "budget"})
            continue
        encoder = base_encoder(arch, args.smoke)
        for keys, gc in configs:
            if time.monotonic() > deadline:
                say(f"| {arch} | {keys['mode']} | {'yes' if gc else 'no'} | skipped: section budget spent |")
                record({"arch": arch, "mode": keys["mode"], "gradient_checkpointing": gc, "skipped": "budget"})
                continue
            try:
                r = finetune_config(
                    encoder,
                    arch,
                    keys,
                    gc,
                    args.device,
                    args.precision,
                    lengths,
                    args.batch,
                    args.warmup,
                    args.steps,
                    deadline,
                )
                if args.device.startswith("cuda"):
                    import torch

                    torch.cuda.empty_cache()  # the configuration's model and optimiser are gone
            except Exception as exc:  # noqa: BLE001 - one failing configuration must not end the check
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                say(f"| {arch} | {keys['mode']} | {'yes' if gc else 'no'} | ERROR {msg} |")
                record({"arch": arch, "mode": keys["mode"], "gradient_checkpointing": gc, "error": msg})
                if args.device.startswith("cuda"):
                    import torch

                    torch.cuda.empty_cache()
                continue
            say(finetune_row(r))
            record(r)
        del encoder


# --- (c) frozen extraction, batched vs one at a time ------------------------------------------
def run_extract(args: argparse.Namespace, deadline: float) -> Dict[str, Any]:
    import numpy as np
    import torch

    from ser_plugins.data.extract import extract_features
    from upstreams.hf import TransformersEncoderUpstream

    upstream = (
        TransformersEncoderUpstream(base_encoder("hubert_base", args.smoke), normalize=True, use_attention_mask=False)
        .eval()
        .to(args.device)
    )
    rng = np.random.default_rng(0)
    seconds = rng.uniform(args.low, args.high, size=args.utterances)
    waves = {
        f"utt{i:03d}": (0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32)
        for i, s in enumerate(seconds)
    }
    layers = list(range(upstream.num_layers))
    say(
        f"frozen extraction: HuBERT-base{' (tiny)' if args.smoke else ''}, random weights, {len(waves)} utterances "
        f"of {args.low:g}-{args.high:g} s ({sum(len(w) for w in waves.values()) / SAMPLE_RATE:.0f} s of audio), "
        f"CNN batching {upstream.cnn_batching}, fp32, features kept in float32"
    )

    def one(batch_size: int) -> Dict[str, Any]:
        stats: Dict[str, float] = {}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        feats = extract_features(
            upstream,
            waves,
            layers,
            max_batch_samples=int(64 * SAMPLE_RATE),
            batch_size=batch_size,
            device=args.device,
            dtype=torch.float32,
            progress=False,
            stats=stats,
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return {
            "seconds": time.perf_counter() - start,
            "batches": int(stats.get("batches", 0)),
            "padding": float(stats.get("padding_fraction", 0.0)),
            "features": feats,
        }

    audio_s = float(sum(len(w) for w in waves.values())) / SAMPLE_RATE
    out: Dict[str, Any] = {"utterances": len(waves), "audio_s": audio_s}
    with torch.inference_mode():
        one(args.extract_batch)  # warm-up (kernels, allocator)
        runs: Dict[str, List[Dict[str, Any]]] = {"one at a time": [], "batched (exact)": []}
        for i in range(args.extract_repeats):
            for name, size in (("one at a time", 1), ("batched (exact)", args.extract_batch)):
                if time.monotonic() > deadline and runs[name]:
                    continue
                r = one(size)
                if runs[name]:
                    r.pop("features")
                runs[name].append(r)
                say(f"  repeat {i + 1} {name}: {r['seconds']:.2f} s, {r['batches']} batches")
    alone = runs["one at a time"][0]["features"]
    batched = runs["batched (exact)"][0]["features"]
    out["max_abs_diff"] = max(float((x - y).abs().max()) for k in alone for x, y in zip(alone[k], batched[k]))
    say("| path | batches | padding | time (s) | utterances/s |")
    say("|---|---|---|---|---|")
    for name, rs in runs.items():
        times = sorted(r["seconds"] for r in rs)
        med = times[len(times) // 2]
        out[name] = {
            "seconds": times,
            "median_s": med,
            "batches": rs[0]["batches"],
            "padding": rs[0]["padding"],
            "utterances_per_s": len(waves) / med,
        }
        say(
            f"| {name} | {rs[0]['batches']} | {100 * rs[0]['padding']:.1f} % | {med:.3f} (min {times[0]:.3f}, "
            f"max {times[-1]:.3f}, {len(times)} runs) | {len(waves) / med:.1f} |"
        )
    say(f"max |batched (exact) - one at a time| over every hidden state's valid frames: {out['max_abs_diff']:.2e}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny models, few steps: checks the script")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (sections share it)")
    p.add_argument("--sections", default="tests,finetune,extract")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--archs", default=",".join(ARCHS), help="fine-tuned models, of: " + ", ".join(ARCHS))
    p.add_argument(
        "--configs",
        default=",".join(FINETUNE_CONFIGS),
        help="fine-tuning configurations, of: " + ", ".join(FINETUNE_CONFIGS),
    )
    p.add_argument("--batch", type=int, default=8, help="utterances per fine-tuning step (the grid's micro-batch)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed fine-tuning steps per configuration")
    p.add_argument("--low", type=float, default=2.0, help="shortest utterance (s)")
    p.add_argument("--high", type=float, default=7.0, help="longest utterance (s)")
    p.add_argument("--utterances", type=int, default=96, help="utterances for the extraction comparison")
    p.add_argument("--extract-batch", type=int, default=16)
    p.add_argument("--extract-repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="results file (default: $OUT/device_check.json when OUT is set)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.utterances, args.extract_repeats, args.batch = 2, 1, 6, 1, 2
        args.low, args.high = 1.0, 2.0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [a for a in args.archs.split(",") if a.strip() and a.strip() not in ARCHS] + [
        c for c in args.configs.split(",") if c.strip() and c.strip() not in FINETUNE_CONFIGS
    ]
    if bad:
        p.error(f"unknown --archs/--configs entries {bad}")
    clock = Clock(args.budget)
    out_path = args.json or (Path(os.environ["OUT"]) / "device_check.json" if os.environ.get("OUT") else None)
    results: Dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sections": {},
    }

    def save() -> None:
        results["elapsed_s"] = time.monotonic() - clock.start
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1, default=str))

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        say("no CUDA device: run with --device cpu --smoke to check the script here")
        results["error"] = "no CUDA device"
        save()
        return 2
    torch.manual_seed(0)
    results["machine"] = machine_facts()
    say("# device check", json.dumps(results["machine"]))
    save()
    shares = {"tests": 0.25, "finetune": 0.5, "extract": 0.25}
    for name in sections:
        left = clock.left()
        if left <= 5:
            say(f"## {name}: skipped, the run's budget is spent")
            results["sections"][name] = {"skipped": "budget"}
            continue
        later = sum(shares.get(s, 0.2) for s in sections[sections.index(name) :])
        share = left * shares.get(name, 0.2) / later
        deadline = clock.section(share)
        say(f"\n## {name} (budget {share:.0f} s, {left:.0f} s left in the run)")
        start = time.monotonic()
        try:
            if name == "tests":
                results["sections"][name] = run_tests(deadline - time.monotonic())
            elif name == "finetune":
                results["sections"][name] = {"rows": []}

                def record(row: Dict[str, Any], rows: List[Dict[str, Any]] = results["sections"][name]["rows"]) -> None:
                    rows.append(row)
                    save()

                run_finetune(args, deadline, record)
            elif name == "extract":
                results["sections"][name] = run_extract(args, deadline)
            else:
                say(f"unknown section {name!r}")
                results["sections"][name] = {"error": "unknown section"}
        except Exception as exc:  # noqa: BLE001 - partial results still get written
            say(f"{name}: ERROR {type(exc).__name__}: {exc}")
            results["sections"].setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
        results["sections"].setdefault(name, {})["seconds"] = time.monotonic() - start
        save()
    say(f"\ndone in {time.monotonic() - clock.start:.0f} s" + (f"; results in {out_path}" if out_path else ""))
    failed = any("error" in s for s in results["sections"].values() if isinstance(s, dict))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
