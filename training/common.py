"""Command-line plumbing shared by ``pretrain.py`` and ``finetune.py`` (argument groups, run folder, exit codes)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python training/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from mono2stereo_core.models import build_model  # noqa: E402
from mono2stereo_core.training.distributed import DistributedContext  # noqa: E402
from mono2stereo_core.training.trainer import (  # noqa: E402
    GroundTruthValidation,
    Trainer,
    load_network_weights,
    machine_description,
    seed_everything,
)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--resume``, ``--set``, ``--threads``, ``--no-progress``: the same in every training command."""
    parser.add_argument("--out", type=Path, help="run folder: checkpoints, metrics.jsonl, tb/ (TensorBoard), config.yaml")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint (same config required; exact: the next step "
        "gives the same loss as an uninterrupted run)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.steps=2000 --set data.crop_width=320 (value parsed as YAML; "
        "repeatable)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: trainer.threads from the config; 0 = torch's default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar (log files, CI)")


def prepare_out_dir(out: Path, *, resume: bool) -> None:
    """Refuses to silently overwrite a run folder; ``--resume`` on an empty folder starts fresh."""
    latest = out / "latest.json"
    if latest.is_file() and not resume:
        step = json.loads(latest.read_text()).get("step")
        raise SystemExit(
            f"error: {out} already holds a run (checkpoint at step {step}); pass --resume to continue it "
            "or choose another --out"
        )


def set_threads(threads: int | None, config: dict[str, Any]) -> None:
    count = int(config["trainer"]["threads"] if threads is None else threads)
    if count > 0:
        torch.set_num_threads(count)
        os.environ.setdefault("OMP_NUM_THREADS", str(count))


def build_network(config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The recipe's network, initialised from ``model.init`` when set; returns (network, init sidecar).

    The global RNGs are seeded from ``config['seed']`` first: the initial weights are part of the recipe
    (torch seeds every new process randomly otherwise).
    """
    seed_everything(int(config["seed"]))
    model_cfg = config["model"]
    network = build_model(
        model_cfg["name"], max_disparity=int(model_cfg["max_disparity"]), **dict(model_cfg.get("overrides") or {})
    )
    init_sidecar = None
    if model_cfg.get("init"):
        init_sidecar = load_network_weights(network, model_cfg["init"])
    return network, init_sidecar


# Written by save_checkpoint from the network and the file; never copied from a source checkpoint's sidecar.
COMPUTED_SIDECAR_KEYS = ("format", "version", "architecture", "max_disparity", "stride", "num_parameters",
                         "gmac_640x480", "weights_file", "weights_sha256")


def check_output_checkpoint(parser: argparse.ArgumentParser, out: Path, *, force: bool) -> None:
    """``--out`` of a command that writes one checkpoint: a .safetensors path that does not exist unless
    ``force`` (argparse's usage error otherwise)."""
    if out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, instead got {out}")
    if out.exists() and not force:
        parser.error(f"{out} exists (pass --force to overwrite)")


def derived_sidecar(source: dict[str, Any], key: str, record: dict[str, Any]) -> dict[str, Any]:
    """The sidecar of a checkpoint made from another without training it (convert, recalibrate): the source's
    entries (recipe, data, step) except the computed ones and its in-run ``validation`` (which described the
    source network), ``record`` under ``key``, and ``reproduce`` = the source's command, then this one."""
    sidecar = {k: v for k, v in source.items() if k not in COMPUTED_SIDECAR_KEYS and k != "validation"}
    sidecar[key] = record
    steps = [source["reproduce"]] if source.get("reproduce") else []
    sidecar["reproduce"] = " && ".join([*steps, command_line()])
    return sidecar


def command_line() -> str:
    """The command as typed (relative to the repository root), for the reproduce entry of the sidecar."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def base_sidecar(config: dict[str, Any], *, stage: str, context: DistributedContext) -> dict[str, Any]:
    return {
        "training": {
            "stage": stage,
            "recipe": config,
            "world_size": context.world_size,
            "machine": machine_description(context.device),
            "torch": torch.__version__,
        },
        "reproduce": command_line(),
    }


def exit_code(summary: dict[str, Any]) -> int:
    """0 when finished; 128 + signal number when stopped by SIGINT/SIGTERM (after checkpointing)."""
    if summary["status"] == "interrupted" and summary.get("signal"):
        return 128 + int(summary["signal"])
    return 0


def report(summary: dict[str, Any], *, out: Path, is_main: bool) -> None:
    if not is_main:
        return
    if summary["status"] == "interrupted":
        print(
            f"stopped by signal {summary['signal']} at step {summary['step']}; checkpoint written. "
            f"Continue with the same command plus --resume (run folder {out})",
            file=sys.stderr,
        )
    else:
        best = summary.get("best") or {}
        extra = f"; best motorcycle bad-2 {best['bad2']:.2f} % at step {best['step']}" if "bad2" in best else ""
        print(f"finished {summary['step']} steps in {summary['wall_s'] / 60:.1f} min{extra}; weights: {summary['checkpoint']}")


def validation_from_config(config: dict[str, Any]) -> GroundTruthValidation | None:
    """The periodic ground-truth validation a recipe asks for (``trainer.validation``), or None."""
    spec = config["trainer"]["validation"]
    return GroundTruthValidation(spec) if spec and str(spec) != "none" else None


def fit_and_report(*, resume: bool, out: Path, context: DistributedContext, **trainer_kwargs: Any) -> int:
    """Runs a :class:`Trainer` to the end (or to SIGINT/SIGTERM), reports, and returns the exit code."""
    trainer = Trainer(out_dir=out, context=context, **trainer_kwargs)
    summary = trainer.fit(resume=resume)
    report(summary, out=out, is_main=context.is_main)
    return exit_code(summary)


def run_cli(main) -> int:
    """``main()`` with user errors (bad recipe values, missing files, unreadable bags) as one clear line."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
