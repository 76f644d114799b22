#!/usr/bin/env python3
"""Where a training step's time goes, op by op, in PyTorch eager and in liera, in one run at the same
thread count: the step of torch_step.py (forward, cross-entropy, backward, clipping, AdamW), profiled with
torch.profiler, then liera's `bench --step` with LIERA_OP_PROFILE=1.

PyTorch's table is its profiler's per-op self CPU time (what an op spends outside the ops it calls), per
step, slowest first. liera's is per op and pass (see `src/profile.rs`). The two name ops differently: timm's
ConvNeXt runs the pointwise layers as `aten::addmm`/`aten::mm` (nn.Linear, channels last) where liera runs
`conv2d_1x1`, and the 7×7 depthwise, stem and downsampling layers as `aten::mkldnn_convolution` and its
backward where liera runs `conv2d_depthwise` and `conv2d`.

Usage (see README.md in this folder):
  cargo build --release
  python3 benches/peers/torch_profile.py --liera target/release/liera [--model convnext_atto] [--config 224]
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_step import CONFIGS, build_torch_step, cpu_model, default_threads  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--liera", default=os.path.join(here, "..", "..", "target", "release", "liera"))
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--config", default="224", choices=sorted(CONFIGS))
    ap.add_argument("--kind", default="full", choices=("full", "lora", "liera"))
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up step)")
    ap.add_argument("--rows", type=int, default=20, help="rows of PyTorch's table")
    args = ap.parse_args()

    import timm
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    batch, side = CONFIGS[args.config]
    print(f"cpu: {cpu_model()}; threads: torch {args.threads}, liera {args.threads}")
    print(f"torch {torch.__version__}, timm {timm.__version__}; {args.model} {args.kind}, batch {batch}, 3×{side}×{side}")

    step, _ = build_torch_step(torch, timm, args.model, args.kind, batch, side)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = sum(step() for _ in range(args.steps))
    print(f"\nPyTorch: {1e3 * wall / args.steps:.1f} ms per step (profiled; the profiler adds some overhead)")
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"{'op':<44} {'calls':>7} {'self ms':>9} {'share':>7}")
    for e in rows[: args.rows]:
        print(
            f"{e.key:<44} {e.count / args.steps:>7.1f} {e.self_cpu_time_total / 1e3 / args.steps:>9.2f}"
            f" {100 * e.self_cpu_time_total / total:>6.1f}%"
        )
    print(f"{'total':<44} {'':>7} {total / 1e3 / args.steps:>9.2f}")

    cmd = [
        args.liera, "bench", "--device", "cpu", "--step", args.model, "--batch", str(batch),
        "--size", str(side), "--kinds", args.kind, "--reps", str(args.steps),
    ]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), LIERA_OP_PROFILE="1")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    print("\nliera:")
    print(out.stderr.strip())
    print(out.stdout.strip())


if __name__ == "__main__":
    main()
