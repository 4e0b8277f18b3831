#!/usr/bin/env python3
"""Make a training checkpoint the shipped default model: weights, sidecar, motorcycle scores, ONNX, in one go.

    python scripts/ship_weights.py --checkpoint runs/pretrain_rt_long/checkpoints/step_0008000.safetensors \\
        --reproduce "python training/pretrain.py --config A.yaml --out runs/a && python training/pretrain.py ..."

Steps (each is a command users can run on their own):
1. copy the checkpoint to ``weights/m2s_rt.safetensors``;
2. ``training/evaluate.py --data motorcycle --compare sgbm`` on the copy (the Middlebury motorcycle pair,
   never used in training) -> the sidecar's ``motorcycle`` block (all, noc, both, edge/interior regions, and
   SGBM in the same run) and ``<eval-out>/motorcycle_side_by_side.png``;
3. write ``weights/m2s_rt.json``: the checkpoint's own sidecar (architecture, recipe, training time) plus
   ``weights_sha256``, ``source_checkpoint``, ``reproduce`` (``--reproduce``: the commands that rebuild the
   checkpoint from nothing), ``shipped`` (date, selection rule) and ``machine``; the checkpoint's
   ``validation`` entry (the trainer's last in-run validation, possibly of another step) is replaced;
4. ``training/export.py`` -> ``weights/m2s_rt_640x480.onnx`` (stamped with the weights' sha256; parity
   torch vs ONNX Runtime checked on motorcycle).

Refuses a checkpoint whose all-pixel bad-2 on motorcycle is not below SGBM's (the regression guard of
``tests/test_pretrain_cli.py``) unless ``--allow-worse``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mono2stereo_core.inference.engine_cache import file_sha256  # noqa: E402  (the hash export.py stamps)

REGIONS = ("noc", "both", "edge", "interior", "both_edge", "both_interior")


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def motorcycle_block(report: dict) -> dict:
    """The sidecar's ``motorcycle`` entry from an evaluate.py report (ours vs SGBM)."""

    def r3(value):
        return None if value is None else round(float(value), 3)  # None: an empty region (no pixels)

    block = {k: (v if k == "n_pixels" else r3(v)) for k, v in report.items()
             if k in ("epe", "bad1", "bad2", "bad3", "d1_all", "density", "n_pixels")}
    for region in REGIONS:
        block[f"{region}_bad2"] = r3(report[region]["bad2"])
    compare = report["compare"]
    block["sgbm_bad2"] = r3(compare["all"]["bad2"])
    for region in REGIONS:
        block[f"sgbm_{region}_bad2"] = r3(compare[region]["bad2"])
    block["sgbm_density"] = r3(compare["all"]["density"])
    block["note"] = (
        "Middlebury 2014 motorcycle (skimage.data.stereo_motorcycle), never used in training; full resolution "
        "741x500; percent of GT-valid pixels, holes count as errors; both = pixels where SGBM predicts; edge = "
        "within 2 px of a GT depth discontinuity; SGBM = OpenCV StereoSGBM 3-way (training/evaluate.py --method sgbm), same "
        "run (training/evaluate.py --data motorcycle --compare sgbm)"
    )
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="X.safetensors with its X.json sidecar")
    parser.add_argument("--reproduce", required=True, help="the commands that rebuild the checkpoint from nothing")
    parser.add_argument("--selection", default=None, help="how the checkpoint was chosen (default: its step of total)")
    parser.add_argument("--note", action="append", default=[], help="KEY=TEXT extra sidecar entries")
    parser.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    parser.add_argument(
        "--name",
        default="m2s_rt",
        help="file stem in weights/: m2s_rt (the default model the runner loads) or another m2s_rt-family file "
        "shipped beside it, e.g. m2s_rt_fast",
    )
    parser.add_argument("--eval-out", type=Path, default=None, help="evaluate.py output folder (default: temporary)")
    parser.add_argument("--allow-worse", action="store_true", help="ship even if not better than SGBM (all bad-2)")
    args = parser.parse_args(argv)

    checkpoint = args.checkpoint.resolve()
    source_sidecar = checkpoint.with_suffix(".json")
    if not checkpoint.is_file() or not source_sidecar.is_file():
        print(f"ship_weights.py: need {checkpoint} and its sidecar {source_sidecar}", file=sys.stderr)
        return 2
    sidecar = json.loads(source_sidecar.read_text())
    if sidecar.get("architecture", {}).get("name") != "m2s_rt":
        print(f"ship_weights.py: the shipped default is an m2s_rt network, {checkpoint} is "
              f"{sidecar.get('architecture', {}).get('name')!r}", file=sys.stderr)
        return 2
    if not args.name.replace("_", "").isalnum() or not args.name.startswith("m2s_rt"):
        print(f"ship_weights.py: --name must be m2s_rt or start with m2s_rt_, instead got {args.name!r}", file=sys.stderr)
        return 2
    for key_text in args.note:
        if "=" not in key_text:
            print(f"ship_weights.py: --note must be KEY=TEXT, instead got {key_text!r}", file=sys.stderr)
            return 2

    python = sys.executable
    weights_dir = args.weights_dir.resolve()
    weights = weights_dir / f"{args.name}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        # Everything is built in a staging folder first; weights/ changes only once all three files exist,
        # and then file by file with os.replace (no half-written file is ever visible).
        staged = Path(tmp) / f"{args.name}.safetensors"
        shutil.copyfile(checkpoint, staged)
        shutil.copyfile(source_sidecar, staged.with_suffix(".json"))
        eval_out = args.eval_out.resolve() if args.eval_out else Path(tmp) / "eval"
        run([python, "training/evaluate.py", "--checkpoint", str(staged), "--data", "motorcycle",
             "--compare", "sgbm", "--backend", "torch", "--no-progress", "--out", str(eval_out)])
        report = json.loads((eval_out / "report.json").read_text())
        block = motorcycle_block(report)
        if (block["bad2"] is None or block["bad2"] >= block["sgbm_bad2"]) and not args.allow_worse:
            print(f"ship_weights.py: all-pixel bad-2 {block['bad2']} is not below SGBM's {block['sgbm_bad2']}; "
                  "not shipping (--allow-worse overrides)", file=sys.stderr)
            return 1

        step, total = sidecar.get("step"), sidecar.get("total_steps")
        shown = checkpoint.relative_to(REPO) if checkpoint.is_relative_to(REPO) else checkpoint
        sidecar.pop("validation", None)
        sidecar.update(
            weights_file=weights.name,
            weights_sha256=file_sha256(staged),
            source_checkpoint=str(shown),
            reproduce=args.reproduce + f"   # shipped file = {shown}",
            shipped={
                "date": dt.date.today().isoformat(),
                "selection": args.selection
                or f"step {step} of {total} of the last stage; no checkpoint selection on the evaluation pair",
                "command": "python scripts/ship_weights.py --checkpoint ... --reproduce ...",
            },
            machine=f"{platform.system()} {platform.machine()}, {sidecar.get('training', {}).get('machine', '?')}",
            motorcycle=block,
        )
        for key_text in args.note:
            key, text = key_text.split("=", 1)
            sidecar[key.strip()] = text
        staged.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        staged_onnx = Path(tmp) / f"{args.name}_640x480.onnx"
        run([python, "training/export.py", "--checkpoint", str(staged), "--height", "480", "--width", "640",
             "--onnx", str(staged_onnx), "--force"])

        weights_dir.mkdir(parents=True, exist_ok=True)
        for source in (staged, staged.with_suffix(".json"), staged_onnx):
            target = weights_dir / source.name
            shutil.copyfile(source, target.with_name(f".{target.name}.tmp"))
            os.replace(target.with_name(f".{target.name}.tmp"), target)
    print(f"shipped {weights} (sha256 {sidecar['weights_sha256'][:12]}): motorcycle bad-2 all {block['bad2']} "
          f"(SGBM {block['sgbm_bad2']}), noc {block['noc_bad2']}, on SGBM's pixels {block['both_bad2']} "
          f"(SGBM {block['sgbm_both_bad2']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
