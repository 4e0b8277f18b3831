#!/usr/bin/env python3
"""Where a training step's time goes, on the machine it runs on (meant for a CUDA GPU; runs on a CPU too).

    python bench/profile_train_step.py --config config/train/pretrain_rt_fast_gpu.yaml [--steps 20] [--top 15]

Builds the recipe's network, objective and dataset exactly as training/pretrain.py does (model.init is
skipped: weights do not change the time), draws one real batch, and times ``Trainer.train_step`` (forward,
loss, backward, clip, optimizer step) on it under a few settings, each a fresh ``Trainer`` with the same initial
weights: the recipe as written, with ``cudnn.benchmark`` (cuDNN picks its fastest kernels per shape), and with
``optim.amp`` fp16 (with loss scaling) and bf16 where the GPU has it — exactly as training would run them (the
loss stays fp32). Then one profiler pass of the recipe's setting lists the operators that take the most time.
Prints ms per step and ratios against the recipe's own setting; nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "training"))

from common import build_network  # noqa: E402

from mono2stereo_core.training.config import load_config  # noqa: E402
from mono2stereo_core.training.datasets import build_dataset  # noqa: E402
from mono2stereo_core.training.distributed import init_distributed  # noqa: E402
from mono2stereo_core.training.objectives import build_objective  # noqa: E402
from mono2stereo_core.training.trainer import Trainer  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, batch, *, steps: int) -> list[float]:
    """Milliseconds of each of ``steps`` train steps after three warm-up steps."""
    device = trainer.device
    times = []
    for i in range(steps + 3):
        synchronize(device)
        started = time.perf_counter()
        trainer.train_step(batch)
        synchronize(device)
        if i >= 3:
            times.append((time.perf_counter() - started) * 1000.0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (after 3 warm-up steps)")
    parser.add_argument("--top", type=int, default=15, help="operators listed from the profiler pass")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    config = load_config(args.config, overrides=args.overrides + ["model.init=null", "trainer.workers=0"])
    # The one-cycle schedule must outlast every setting's steps plus the profiler pass.
    config["optim"]["steps"] = max(int(config["optim"]["steps"]), 4 * (args.steps + 3) + 10)
    context = init_distributed()
    device = context.device
    network, _ = build_network(config)
    dataset = build_dataset(config, stride=int(network.stride))
    batch_size = int(config["optim"]["batch_size"])
    items = [dataset[i] for i in range(batch_size)]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    state = copy.deepcopy(network.state_dict())
    loss_fn = build_objective(config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    shape = "x".join(str(s) for s in batch["left"].shape)
    print(f"{args.config.name}: batch {shape} on {name}, torch {torch.__version__}, "
          f"optim.amp in recipe: {config['optim']['amp']}")

    recipe_amp = config["optim"]["amp"]
    settings = [("recipe as written", False, recipe_amp)]
    if device.type == "cuda":
        settings += [("cudnn.benchmark", True, recipe_amp), ("cudnn.benchmark + AMP fp16", True, "fp16")]
        if torch.cuda.is_bf16_supported():
            settings.append(("cudnn.benchmark + AMP bf16", True, "bf16"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="m2s_profile_") as out:

        def trainer_for(amp) -> Trainer:
            network.load_state_dict(state)
            settings = copy.deepcopy(config)
            settings["optim"]["amp"] = amp
            return Trainer(config=settings, model=network, dataset=dataset, loss_fn=loss_fn, out_dir=out,
                           context=context)

        for label, benchmark, amp in settings:
            torch.backends.cudnn.benchmark = benchmark
            try:
                times = time_steps(trainer_for(amp), batch, steps=args.steps)
                rows.append((label, statistics.median(times), min(times)))
            except Exception as error:  # one setting failing (a kernel missing on this GPU) must not hide the rest
                rows.append((label, float("nan"), float("nan")))
                print(f"  {label}: {type(error).__name__}: {str(error)[:200]}")
        base = rows[0][1]
        print("| setting | median ms/step | min ms | vs recipe |")
        print("|---|---:|---:|---:|")
        for label, median, fastest in rows:
            print(f"| {label} | {median:.1f} | {fastest:.1f} | {median / base:.2f}x |")

        torch.backends.cudnn.benchmark = False
        trainer = trainer_for(recipe_amp)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            time_steps(trainer, batch, steps=3)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\nrecipe as written, 6 steps, top {args.top} operators by {key}:")
        print(profiler.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    sys.exit(main())
