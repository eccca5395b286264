"""Fine-tuning modes (issue 28): full fine-tuning vs LoRA vs bottleneck adapters, per training step.

What one optimiser step costs in each ``finetune.mode`` on a base-size encoder: the parameters that
train, the memory the step adds and the step time (forward + backward + optimiser step). The model is
``WavLMModel(WavLMConfig())`` -- WavLM Base+'s architecture (12 layers, 768 wide, 94.4 M
parameters), randomly initialised (seed 0), saved like a hub checkpoint and loaded through the ``hf``
upstream plugin, so every mode takes the project's own path:

* ``model.build_upstream`` with the mode's ``FinetuneConfig`` (``lora`` / ``adapter``: the
  ``peft_ser`` preset, ``upstreams/peft_tuning.py``: LoRA rank 16 on both feed-forward projections of
  every layer, alpha 1; adapters of 64 beside every feed-forward output projection);
* ``model.build_head`` with peft-ser's head (softmax-weighted sum of all hidden states, projection to
  256, mean pooling, a 256-unit MLP) and ``model.SERModel``;
* ``training.trainer.build_optimizer`` (AdamW, the head at ``training.lr``, the upstream at
  ``finetune.upstream_lr``) and the trainer's step: cross-entropy, backward, ``clip_grad_norm_`` over
  the optimiser's parameters, ``optimizer.step()``, ``zero_grad(set_to_none=True)``.

Modes: ``frozen`` (only the head trains; the upstream runs without autograd -- in a real run its
features come from the cache, so this is an upper bound), ``finetune`` (all but the CNN: the study
grid's fine-tuning), ``full`` (everything), ``lora``, ``adapter``, and ``lora (bare loop)``: the same
LoRA through ``peft.inject_adapter_in_model`` on a plain ``transformers`` model with a hand-written
head and loop, the reference for what the project's wrappers cost.

Memory: each mode in a fresh subprocess (so one mode's memory cannot hide in another's), one training
step on the batch (``--batch`` utterances of noise, durations uniform in 2-3 s, seed 0); on CPU the
peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` after the model and optimiser
are built) minus the resident size just before that step: gradients, optimiser state and activations
(not the weights); where the reset is unavailable, ``ru_maxrss`` (peak over the process's life, so an
upper bound). On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.
Time: every mode built in one more subprocess, one warm-up step each, then ``--repeats`` rounds of one
step per mode, the order reversed every other round, so that a change in the machine's load (a shared
machine) falls on every mode alike; each figure is the median of the rounds (min and max beside it).
On a shared machine the step times swing several-fold with other jobs' load (measured here: LoRA
steps of 21-25 s while another engineer's 2-process job ran, 1.7 s on the idle machine); the rounds
share the load, so compare modes within one run. ``--flush-denormal`` (``torch.set_flush_denormal``)
was checked as a cause of slow steps and changes nothing on the idle machine.
Steps counted: per mode 1 (memory) + 1 (warm-up) + ``--repeats`` (timed).

    python benchmarks/bench_peft.py                  # CPU, 4 x 2-3 s, 3 rounds: ~2 minutes on 2 idle cores
    python benchmarks/bench_peft.py --flush-denormal # the same, denormal numbers flushed to zero
    python benchmarks/bench_peft.py --device cuda --precision bf16 --batch 16
    python benchmarks/bench_peft.py --quick          # a tiny model: checks the script, figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from common import TINY, WORK, _save_random, load_average, machine, median, spread  # noqa: E402

SAMPLE_RATE = 16000
#: mode -> FinetuneConfig keys (all but the bare loop take the project's path)
MODES: Dict[str, Dict[str, Any]] = {
    "frozen": {"mode": "frozen"},
    "finetune": {"mode": "finetune", "upstream_lr": 5e-5},
    "full": {"mode": "full", "upstream_lr": 5e-5},
    "lora": {"mode": "lora", "peft_preset": "peft_ser", "upstream_lr": 5e-4},
    "adapter": {"mode": "adapter", "peft_preset": "peft_ser", "upstream_lr": 5e-4},
    "lora (bare loop)": {"mode": "bare_lora"},
}
LABELS = {
    "frozen": "frozen + head",
    "finetune": "finetune (CNN frozen)",
    "full": "full",
    "lora": "lora (peft_ser)",
    "adapter": "adapter (peft_ser)",
    "lora (bare loop)": "lora, bare loop (reference)",
}


def wavlm_folder(tiny: bool = False, kind: str = "wavlm") -> Path:
    """A randomly initialised WavLM Base+ (``kind`` hubert: HuBERT-base; ``tiny``: 2 layers, 64 wide) saved
    like a hub checkpoint (WavLM Base+'s preprocessor: no normalisation, attention mask)."""
    folder = WORK / f"{kind}-{'tiny' if tiny else 'base'}-random-peft"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import HubertConfig, HubertModel, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    extra = dict(TINY) if tiny else {}
    if kind == "wavlm":
        model = WavLMModel(WavLMConfig(**extra))  # the defaults are WavLM Base+'s architecture
        return _save_random(folder, model, normalize=False, attention_mask=True)
    return _save_random(folder, HubertModel(HubertConfig(**extra)), normalize=True, attention_mask=False)


def batch(count: int, low: float, high: float, seed: int = 0):
    """``(padded waveforms, lengths, targets)``: noise of uniform durations, 4 classes."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    lengths = [int(s * SAMPLE_RATE) for s in rng.uniform(low, high, size=count)]
    wavs = torch.zeros(count, max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = torch.from_numpy((0.1 * rng.standard_normal(n)).astype("float32"))
    return wavs, torch.tensor(lengths), torch.tensor([i % 4 for i in range(count)])


def project_model(folder: Path, keys: Dict[str, Any], gradient_checkpointing: bool = False):
    """``(SERModel, optimizer, finetune config)`` through the project's builders (peft-ser's head)."""
    from ser_plugins.model import SERModel, build_head, build_upstream
    from ser_plugins.recipe import FeaturesConfig, FinetuneConfig, PluginSection, TrainingConfig
    from ser_plugins.training.trainer import build_optimizer

    finetune = FinetuneConfig(**keys, gradient_checkpointing=gradient_checkpointing and keys["mode"] != "frozen")
    upstream = build_upstream(PluginSection(name="hf", options={"model": str(folder)}), finetune)
    head, kept = build_head(
        FeaturesConfig(layer="weighted_sum", projection=256),
        PluginSection(name="mean"),
        PluginSection(name="mlp", options={"hidden_sizes": [256]}),
        upstream,
        4,
    )
    model = SERModel(upstream, head, kept)
    training = TrainingConfig(lr=5e-4, weight_decay=1e-4, grad_clip=1.0)
    return model, build_optimizer(model, training, finetune), training


class BareLoRA:
    """WavLM + peft LoRA (rank 16, alpha 1, feed-forward) + weighted sum, projection, mean, MLP: no project code."""

    def __init__(self, folder: Path) -> None:
        import peft
        import torch
        from torch import nn
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(folder))
        self.encoder.config.layerdrop = 0.0
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        names = [
            n
            for n, m in self.encoder.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in ("intermediate_dense", "output_dense")
        ]
        peft.inject_adapter_in_model(
            peft.LoraConfig(r=16, lora_alpha=1.0, lora_dropout=0.0, target_modules=names), self.encoder
        )
        layers = self.encoder.config.num_hidden_layers + 1
        self.weights = nn.Parameter(torch.zeros(layers))
        self.head = nn.ModuleDict(
            {
                "proj": nn.Linear(self.encoder.config.hidden_size, 256),
                "mlp": nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)),
            }
        )
        self.module = nn.ModuleDict({"encoder": self.encoder, "head": self.head})
        self.module.register_parameter("layer_weights", self.weights)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
        self.params = params

    def __call__(self, wavs, lengths):
        import torch

        mask = (torch.arange(wavs.shape[1], device=wavs.device)[None] < lengths[:, None]).long()
        out = self.encoder(wavs, attention_mask=mask, output_hidden_states=True)
        states = torch.stack(out.hidden_states)  # (layers, batch, frames, dim)
        mixed = (torch.softmax(self.weights, 0)[:, None, None, None] * states).sum(0)
        frames = self.encoder._get_feat_extract_output_lengths(lengths)
        valid = (torch.arange(mixed.shape[1], device=wavs.device)[None] < frames[:, None]).unsqueeze(-1)
        x = self.head["proj"](mixed)
        pooled = (x * valid).sum(1) / frames[:, None].to(x.dtype)
        return self.head["mlp"](pooled)


def _rss_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = _rss_kib("VmHWM"), _rss_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


class Stepper:
    """One mode built on ``device``: its parameter counts and ``step()`` (forward + backward + optimiser step)."""

    def __init__(self, name: str, folder: Path, device: str, precision: str, gradient_checkpointing: bool) -> None:
        import torch

        torch.manual_seed(0)
        keys = MODES[name]
        self.name, self.device, self.precision = name, device, precision
        if keys["mode"] == "bare_lora":
            bare = BareLoRA(folder)
            self.module, self.optimizer, self.params = bare.module.to(device), bare.optimizer, bare.params
            encoder_params = list(bare.encoder.parameters())
            self.forward, self.clip = bare, 1.0
        else:
            model, self.optimizer, training = project_model(folder, keys, gradient_checkpointing)
            self.module = model.to(device)
            self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
            encoder_params = list(model.upstream.parameters())
            self.forward, self.clip = model, training.grad_clip
        self.module.train()
        if keys["mode"] == "frozen":
            self.module.upstream.eval()
        self.counts = {
            "trainable": sum(p.numel() for p in self.module.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in self.module.parameters()),
            "encoder_trainable": sum(p.numel() for p in encoder_params if p.requires_grad),
            "encoder_total": sum(p.numel() for p in encoder_params),
        }

    def step(self, wavs, lengths, targets) -> float:
        """One training step; its wall time in seconds."""
        import torch
        from torch import nn

        from ser_plugins.training.trainer import autocast

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            logits = self.forward(wavs, lengths)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def memory_of_mode(name: str, folder: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """In a fresh process: build one mode, take one step (the first: it allocates the optimiser state);
    the counts and the memory that step added."""
    import torch

    stepper = Stepper(name, folder, args.device, args.precision, args.gradient_checkpointing)
    wavs, lengths, targets = (t.to(args.device) for t in batch(args.batch, args.low, args.high))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        method = "torch.cuda.max_memory_allocated - allocated before the first step"
    else:
        reset = _reset_peak()
        before = (_rss_kib("VmRSS") or 0) * 1024
        method = (
            "peak RSS (VmHWM, reset via /proc/self/clear_refs) - RSS before the first step"
            if reset
            else "ru_maxrss (peak over the process's life) - RSS before the first step"
        )
    first = stepper.step(wavs, lengths, targets)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    elif method.startswith("peak RSS"):
        peak = (_rss_kib("VmHWM") or 0) * 1024 - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"mode": name, **stepper.counts, "peak_bytes": int(peak), "memory_method": method, "first_step_s": first}


def timing(modes: List[str], folder: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """In one process: every mode built, one warm-up step each, then ``repeats`` rounds of one step per
    mode, in alternating order (a change of machine load falls on every mode alike)."""
    import torch

    steppers = {m: Stepper(m, folder, args.device, args.precision, args.gradient_checkpointing) for m in modes}
    wavs, lengths, targets = (t.to(args.device) for t in batch(args.batch, args.low, args.high))
    warm = {m: st.step(wavs, lengths, targets) for m, st in steppers.items()}
    times: Dict[str, List[float]] = {m: [] for m in modes}
    for i in range(args.repeats):
        for m in modes if i % 2 == 0 else modes[::-1]:
            times[m].append(steppers[m].step(wavs, lengths, targets))
        print(f"round {i + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in modes), file=sys.stderr, flush=True)
    return {
        "warmup_s": warm,
        "step_s": times,
        "utterances_per_step": int(args.batch),
        "audio_s_per_step": float(lengths.sum()) / SAMPLE_RATE,
        "threads": torch.get_num_threads(),
    }


def child(args: argparse.Namespace, *extra: str) -> Dict[str, Any]:
    """Run this script's ``--child`` part in a fresh Python process; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--folder", str(args.folder), "--device", args.device]
    cmd += ["--precision", args.precision, "--batch", str(args.batch), "--low", str(args.low)]
    cmd += ["--high", str(args.high), "--repeats", str(args.repeats), *extra]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.flush_denormal:
        cmd.append("--flush-denormal")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(HERE.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    for line in proc.stderr.splitlines():
        if line.startswith("round "):
            print("  " + line, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: List[Dict[str, Any]]) -> List[str]:
    """The markdown table of the results (medians of the timed steps, min and max beside them)."""
    ref = next((r for r in results if r["mode"] == "finetune"), results[0])
    ref_step = median(ref["step_s"])
    lines = [
        "| mode | trainable params | of total | encoder trainable | peak memory added (MiB) | "
        "step time (s) | utterances/s | vs finetune | steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        med = median(r["step_s"])
        lines.append(
            f"| {LABELS[r['mode']]} | {r['trainable'] / 1e6:.3f} M | {100 * r['trainable'] / r['total']:.2f} % | "
            f"{r['encoder_trainable'] / 1e6:.3f} M of {r['encoder_total'] / 1e6:.1f} M | "
            f"{r['peak_bytes'] / 2**20:.0f} | {spread(r['step_s'])} | {r['utterances_per_step'] / med:.2f} | "
            f"{ref_step / med:.2f} x | 1 + 1 + {len(r['step_s'])} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="autocast on CUDA (the trainer's); a no-op on CPU",
    )
    p.add_argument("--batch", type=int, default=4, help="utterances per step")
    p.add_argument("--low", type=float, default=2.0, help="shortest utterance (s)")
    p.add_argument("--high", type=float, default=3.0, help="longest utterance (s)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per mode after the warm-up step")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--flush-denormal",
        action="store_true",
        help="torch.set_flush_denormal(True) in the measuring processes (CPU; measured: no effect)",
    )
    p.add_argument("--quick", action="store_true", help="tiny model, 1 timed step: checks the script runs")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child-memory", help=argparse.SUPPRESS)
    p.add_argument("--child-timing", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flush_denormal:
        import torch

        torch.set_flush_denormal(True)
    if args.child_memory:
        print(json.dumps(memory_of_mode(args.child_memory, args.folder, args)))
        return
    if args.child_timing:
        print(json.dumps(timing(args.child_timing.split(","), args.folder, args)))
        return
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; modes: {', '.join(MODES)}")
    args.folder = wavlm_folder(args.quick)
    print(machine(), "|", load_average(), flush=True)
    gc = ", gradient checkpointing" if args.gradient_checkpointing else ""
    gc += ", denormals flushed to zero" if args.flush_denormal else ""
    print(
        f"WavLM Base+ architecture{' (tiny)' if args.quick else ''}, random weights (seed 0), device "
        f"{args.device}, precision {args.precision}{gc}; a batch of {args.batch} utterances of "
        f"{args.low:g}-{args.high:g} s (uniform, seed 0). Memory: each mode in a fresh subprocess, one step. "
        f"Time: every mode in one subprocess, 1 warm-up step each, then {args.repeats} rounds of one step per "
        "mode in alternating order (forward + backward + optimiser step)",
        flush=True,
    )
    start = time.perf_counter()
    memory = {}
    for name in modes:
        memory[name] = child(args, "--child-memory", name)
        r = memory[name]
        print(
            f"  memory {LABELS[name]:30s}: peak +{r['peak_bytes'] / 2**20:.0f} MiB, "
            f"first step {r['first_step_s']:.2f} s",
            flush=True,
        )
    timed = child(args, "--child-timing", ",".join(modes))
    results = [
        {
            **memory[m],
            "step_s": timed["step_s"][m],
            "warmup_s": timed["warmup_s"][m],
            "utterances_per_step": timed["utterances_per_step"],
        }
        for m in modes
    ]
    print()
    print(
        f"{timed['audio_s_per_step']:.2f} s of audio per step; {timed['threads']} torch threads; memory: "
        f"{results[0]['memory_method']}; {load_average()} at the end; {time.perf_counter() - start:.0f} s in all"
    )
    print()
    print("\n".join(table(results)))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "memory": memory, "timing": timed}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
