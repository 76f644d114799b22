#!/usr/bin/env python3
"""Times convnext_atto / convnextv2_atto training steps in PyTorch eager and in liera, in one run,
interleaved (torch, liera, torch, liera, ...), at the same thread count, and prints liera's ratio.

The step is the one `liera bench --step` times: forward, cross-entropy over 10 classes, backward,
gradient clipping at 5.0, AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.05), and reading the
loss back. Kinds:

  full   every parameter trains;
  lora   rank 8, alpha 8, on conv_dw, mlp.fc1 and mlp.fc2, head.fc trains too, the rest is frozen;
         W' = W + (alpha/r)·B·A (B zero-initialised), as a weight reparameterisation like liera's
         (torch.nn.utils.parametrize), not PEFT's two extra convolutions;
  liera  the same factors, W' = W ⊙ exp((alpha/r)·B·A).

Input: liera's `--step` takes RGB input only, so both sides use 3 input channels; the "1×32×32" case of
the issue runs here as 3×32×32 for both (like for like).

Usage (see README.md in this folder):
  cargo build --release
  python3 benches/peers/torch_step.py --liera target/release/liera

Per configuration the script alternates rounds: one torch round (each kind: --steps timed steps), then one
liera round (`liera bench --device cpu --json --step <preset> --batch B --size S --kinds ... --reps
--steps`, a fresh process that builds its models, takes one untimed warm-up step per kind, then
--steps timed steps per kind, interleaved over the kinds). A round's figure is the median of its steps;
the table gives the median over rounds, the spread (min–max of the round figures) and
liera/torch = torch time / liera time (above 1: liera is faster).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

CONFIGS = {"32": (64, 32), "224": (32, 224)}  # name: (batch, side); 3 channels
KINDS = ("full", "lora", "liera")
RANK, ALPHA = 8, 8.0
TARGETS = ("conv_dw", "mlp.fc1", "mlp.fc2")


def default_threads():
    env = os.environ.get("RAYON_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(
                        f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags
                    )
    except OSError:
        pass
    return "?"


def build_torch_step(torch, timm, preset, kind, batch, side):
    """A closure running one training step of `kind`; returns it (after one warm-up step)."""
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils import parametrize

    class LowRank(nn.Module):
        """W' = W + s·BA (lora) or W ⊙ exp(s·BA) (liera), BA reshaped to W's shape."""

        def __init__(self, shape, exact_exp):
            super().__init__()
            rows, cols = shape[0], math.prod(shape[1:])
            bound = 1.0 / math.sqrt(cols)  # kaiming-uniform(a=√5) of a (r × cols) factor
            self.A = nn.Parameter(torch.empty(RANK, cols).uniform_(-bound, bound))
            self.B = nn.Parameter(torch.zeros(rows, RANK))
            self.s = ALPHA / RANK
            self.exact_exp = exact_exp

        def forward(self, w):
            delta = (self.B @ self.A).view_as(w) * self.s
            return w * torch.exp(delta) if self.exact_exp else w + delta

    torch.manual_seed(0)
    model = timm.create_model(preset, pretrained=False, num_classes=10, in_chans=3)
    model.train()
    if kind != "full":
        for p in model.parameters():
            p.requires_grad_(False)
        for name, module in model.named_modules():
            if name.endswith(TARGETS) and isinstance(module, (nn.Conv2d, nn.Linear)):
                parametrize.register_parametrization(
                    module, "weight", LowRank(module.weight.shape, kind == "liera")
                )
                module.parametrizations.weight.original.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    x = torch.randn(batch, 3, side, side)
    y = torch.arange(batch) % 10

    def step():
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        loss.item()
        return time.perf_counter() - t

    step()  # warm-up
    return step, sum(p.numel() for p in params)


def liera_round(binary, preset, batch, side, kinds, steps, threads):
    cmd = [
        binary, "bench", "--device", "cpu", "--json", "--step", preset,
        "--batch", str(batch), "--size", str(side), "--kinds", ",".join(kinds), "--reps", str(steps),
    ]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    if doc.get("threads") != threads:
        print(f"warning: liera ran on {doc.get('threads')} threads, not {threads}", file=sys.stderr)
    results = doc["results"]
    if len(results) != len(kinds):
        raise RuntimeError(f"liera returned {len(results)} results for {len(kinds)} kinds: {out}")
    times = {}
    for kind, r in zip(kinds, results):
        if f"({kind}" not in r["name"]:
            raise RuntimeError(f"unexpected liera result {r['name']!r} for kind {kind}")
        times[kind] = r["median_s"]
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--liera", default=os.path.join(here, "..", "..", "target", "release", "liera"),
                    help="the liera binary (default: target/release/liera)")
    ap.add_argument("--models", default="convnext_atto,convnextv2_atto")
    ap.add_argument("--configs", default="32,224", help="32: batch 64 at 3×32×32; 224: batch 32 at 3×224×224")
    ap.add_argument("--kinds", default="full,lora,liera")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="threads of both (default: RAYON_NUM_THREADS, else the CPUs this process may use)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each side per configuration (≥ 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per kind per round")
    args = ap.parse_args()

    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    kinds = [k for k in args.kinds.split(",") if k]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r} (known: {', '.join(CONFIGS)})")
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r} (known: {', '.join(KINDS)})")
    if args.rounds < 2:
        ap.error("--rounds must be at least 2")
    binary = os.path.abspath(args.liera)
    if not os.access(binary, os.X_OK):
        ap.error(f"no liera binary at {binary} (build it with `cargo build --release` or pass --liera)")

    import torch
    import timm

    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs; {cpu_flags()})")
    print(f"threads: torch {torch.get_num_threads()} (torch.set_num_threads), liera {args.threads} "
          f"(RAYON_NUM_THREADS)")
    print(f"torch {torch.__version__}, timm {timm.__version__}, python {platform.python_version()}; "
          f"liera {binary} at {commit}")
    print(f"{args.rounds} rounds per side, {args.steps} timed steps per kind per round; "
          "input 3×S×S for both sides\n")

    rows = []
    for preset in models:
        for c in configs:
            batch, side = CONFIGS[c]
            steps = {k: build_torch_step(torch, timm, preset, k, batch, side) for k in kinds}
            print(f"  {preset} 3×{side}×{side} b{batch}: torch trainable parameters " + ", ".join(
                f"{k} {steps[k][1]:,}" for k in kinds), flush=True)
            t_rounds = {k: [] for k in kinds}
            l_rounds = {k: [] for k in kinds}
            for r in range(args.rounds):
                for k in kinds:  # torch round
                    t_rounds[k].append(statistics.median(steps[k][0]() for _ in range(args.steps)))
                time.sleep(0.2)  # let torch's worker threads stop spinning
                for k, t in liera_round(binary, preset, batch, side, kinds, args.steps, args.threads).items():
                    l_rounds[k].append(t)
                print(f"  {preset} 3×{side}×{side} b{batch} round {r + 1}: " + ", ".join(
                    f"{k} torch {1e3 * t_rounds[k][-1]:.0f} ms / liera {1e3 * l_rounds[k][-1]:.0f} ms"
                    for k in kinds), flush=True)
            for k in kinds:
                rows.append((preset, side, batch, k, t_rounds[k], l_rounds[k]))
            del steps

    head = ("configuration", "torch img/s", "liera img/s", "liera/torch")
    sub = ("", "median (min–max)", "median (min–max)", "(speed)")
    table = []
    for preset, side, batch, k, tr, lr in rows:
        cells = [f"{preset} 3×{side}×{side} b{batch} {k}"]
        for ts in (tr, lr):  # images/s: median round, slowest round, fastest round
            cells.append(f"{batch / statistics.median(ts):.1f} ({batch / max(ts):.1f}–{batch / min(ts):.1f})")
        cells.append(f"{statistics.median(tr) / statistics.median(lr):.2f}×")
        table.append(cells)
    widths = [max(len(r[i]) for r in [head, sub] + table) for i in range(4)]
    print()
    for r in [head, sub] + table:
        print(f"{r[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:])))


if __name__ == "__main__":
    main()
