#!/usr/bin/env python3
"""Score a stereo model (or the OpenCV SGBM baseline) against ground-truth disparity.

    python training/evaluate.py --data motorcycle --out eval/                 # shipped default vs SGBM
    python training/evaluate.py --checkpoint weights/m2s_rt.safetensors --data ~/middlebury/trainingQ --out eval/
    python training/evaluate.py --method sgbm --data ~/kitti2015 --out eval_sgbm/

--data is "motorcycle" or "aloe" (real pairs bundled, no download; "real" = both), a Middlebury-2014 scene folder (im0.png, im1.png,
disp0GT.pfm, calib.txt), a folder of such scenes, or a KITTI 2012/2015 folder. Writes OUT/report.json:
epe, bad1, bad2, bad3, d1_all, density over all ground-truth-valid pixels (holes count as errors), the
same under "noc" (pixels visible in both views), "occ" / "occ_border" (not visible in the right view / of those
the ones left of its image), "edge" / "interior" (within 2 px of a ground-truth depth
discontinuity or not) and, when comparing, under "both" (pixels both methods predict), "both_edge",
"both_interior" and "compare"; "flying" (percent of GT-valid pixels predicted between two GT surfaces: points
floating in the cloud); per-scene entries; method, checkpoint and timing. Each scene also gets
OUT/<scene>_side_by_side.png (left | GT | ours | SGBM, occlusion | bad-2 | error maps) and
OUT/<scene>_disparity.png. Metric definitions: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mono2stereo_core.cli_config import apply_yaml_config  # noqa: E402
from mono2stereo_core.datasets_gt import GTSample, load_gt_dataset  # noqa: E402
from mono2stereo_core.evaluation import (  # noqa: E402
    METRIC_KEYS,
    evaluate_dataset,
    sgbm_disparity,
    sgbm_num_disparities,
    stereo_image_proc_disparity,
)

log = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, help="YAML file whose keys are these options' long names")
    known, _ = pre.parse_known_args(argv)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[pre],
    )
    parser.add_argument(
        "--checkpoint", help="model file (.safetensors, .onnx, .engine); default: the shipped weights"
    )
    parser.add_argument("--data", help='"motorcycle", "aloe", "real" (both), a Middlebury / KITTI folder, or a comma-separated list (required)')
    parser.add_argument("--out", type=Path, help="output folder for report.json and PNGs (required)")
    parser.add_argument(
        "--method",
        choices=("ours", "sgbm", "sgbm_sip", "bm_sip"),
        default="ours",
        help="what to score (default ours); sgbm = the 3-way SGBM baseline, sgbm_sip / bm_sip = OpenCV SGBM / "
        "block matching with ROS 2 stereo_image_proc's default parameters",
    )
    parser.add_argument(
        "--compare",
        choices=("sgbm", "none"),
        default=None,
        help="second method scored on the same pixels (default: sgbm for --method ours, none for sgbm)",
    )
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto")
    parser.add_argument(
        "--input-scale",
        type=float,
        default=1.0,
        help="run the network on each pair resized by this factor (torch backend; default 1; see "
        "docs/inference.md, 'Accuracy options')",
    )
    parser.add_argument(
        "--lr-check",
        action="store_true",
        help="left-right consistency check with background fill (a second, mirrored network pass; see "
        "docs/inference.md)",
    )
    parser.add_argument(
        "--no-occlusion-fill",
        action="store_true",
        help="score the network's own values where its disparity hides a pixel from the right camera (the "
        "runner's default occlusion_fill gives them the background; see docs/inference.md)",
    )
    parser.add_argument(
        "--max-disparity",
        type=float,
        default=None,
        help="SGBM search range in pixels (rounded up to 16); default per scene: GT max + 8, rounded up to 16",
    )
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    if known.config is not None:
        apply_yaml_config(parser, known.config)
    args = parser.parse_args(argv)
    if args.data is None or args.out is None:
        parser.error("--data and --out are required (on the command line or in --config)")
    args.out = Path(args.out)
    if args.compare is None:
        args.compare = "sgbm" if args.method == "ours" else "none"
    if args.method == "sgbm" and args.compare == "sgbm":
        parser.error("--method sgbm --compare sgbm compares SGBM with itself; use --compare none")
    if (args.lr_check or args.no_occlusion_fill or args.input_scale != 1.0) and args.method != "ours":
        parser.error(
            "--lr-check, --no-occlusion-fill and --input-scale apply to the network (--method ours), not to "
            f"--method {args.method}"
        )
    if args.max_disparity is not None and not args.max_disparity > 0:
        parser.error(f"--max-disparity must be positive, instead got {args.max_disparity}")
    return args


def sgbm_predictor(max_disparity: float | None, method: str = "sgbm"):
    """A classical matcher (``method``: sgbm, sgbm_sip, bm_sip); the range from --max-disparity or the GT."""

    def predict(sample: GTSample) -> np.ndarray:
        if max_disparity is not None:
            num = int(np.ceil(max_disparity / 16.0) * 16)
        else:
            known = np.isfinite(sample.disparity)
            if not known.any():
                raise ValueError(f"scene {sample.name} has no valid ground truth to size the SGBM range from")
            num = sgbm_num_disparities(float(sample.disparity[known].max()))
        if method == "sgbm":
            return sgbm_disparity(sample.left, sample.right, num_disparities=num)
        algorithm = {"sgbm_sip": "sgbm", "bm_sip": "bm"}[method]
        return stereo_image_proc_disparity(sample.left, sample.right, num_disparities=num, algorithm=algorithm)

    return predict


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        samples = load_gt_dataset(args.data)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 2

    sgbm = sgbm_predictor(args.max_disparity)
    info: dict = {"data": str(args.data), "backend": None, "checkpoint": None}
    if args.method == "ours":
        from mono2stereo_core.inference import load_runner
        from mono2stereo_core.inference.runner import resolve_model_path

        t0 = time.perf_counter()
        try:
            info["checkpoint"] = str(resolve_model_path(args.checkpoint))
            runner = load_runner(
                args.checkpoint,
                backend=args.backend,
                lr_check=args.lr_check,
                input_scale=args.input_scale,
                occlusion_fill=not args.no_occlusion_fill,
            )
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"evaluate.py: cannot load the model: {exc}", file=sys.stderr)
            return 2
        info["load_seconds"] = round(time.perf_counter() - t0, 3)
        info["backend"] = getattr(runner, "description", type(runner).__name__)

        def predict(sample: GTSample):
            return runner(sample.left, sample.right)

    else:
        if args.checkpoint is not None:
            log.warning("--checkpoint %s is ignored with --method sgbm", args.checkpoint)
        info["backend"] = {
            "sgbm": "opencv StereoSGBM (3-way, block 5, P1 8*3*25, P2 32*3*25, uniqueness 10, speckle 100/2)",
            "sgbm_sip": "opencv StereoSGBM with stereo_image_proc defaults (MODE_SGBM, mono8, window 15, "
            "P1 200, P2 400, prefilter cap 31, uniqueness 15, speckle 100/4)",
            "bm_sip": "opencv StereoBM with stereo_image_proc defaults (mono8, window 15, prefilter 9/31, "
            "texture 10, uniqueness 15, speckle 100/4)",
        }[args.method]
        predict = sgbm if args.method == "sgbm" else sgbm_predictor(args.max_disparity, args.method)

    report = evaluate_dataset(
        samples,
        predict,
        compare_fn=sgbm if args.compare == "sgbm" else None,
        method_name=args.method,
        compare_name="sgbm",
        out_dir=args.out,
        progress=not args.no_progress,
    )
    report.update(info)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, args.out / "report.json")

    def fmt(section: dict) -> str:
        return "  ".join(f"{k} {section[k]:.3f}" if section[k] is not None else f"{k} -" for k in METRIC_KEYS)

    print(f"{args.method} all  : {fmt(report)}")
    print(f"{args.method} noc  : {fmt(report['noc'])}")
    if "both" in report:
        print(f"sgbm all  : {fmt(report['compare']['all'])}")
        print(f"{args.method} both : {fmt(report['both'])}")
        print(f"sgbm both : {fmt(report['compare']['both'])}")
        # Where the errors are: near GT depth edges (object boundaries, thin structures) or on surfaces.
        share = 100.0 * report["both_edge"]["n_pixels"] / max(report["both"]["n_pixels"], 1)

        def bad2(section: dict) -> str:
            return "-" if section["bad2"] is None else f"{section['bad2']:.2f}"

        for region in ("both_edge", "both_interior"):
            print(
                f"{region:<13}: {args.method} bad2 {bad2(report[region])}  sgbm bad2 {bad2(report['compare'][region])}"
                + (f"  ({share:.1f} % of the 'both' pixels lie within 2 px of a depth edge)" if region == "both_edge" else "")
            )
    # How much of the all-pixel bad-2 is occluded pixels (no match exists; the left border not even a partner
    # column): points of the all-pixel number, and the regions' own bad-2.
    n_all = max(report["n_pixels"], 1)

    def share_of(section: dict) -> tuple[float, float]:
        bad = section["bad2"] or 0.0
        return 100.0 * section["n_pixels"] / n_all, bad * section["n_pixels"] / n_all

    occ_pct, occ_points = share_of(report["occ"])
    border_pct, border_points = share_of(report["occ_border"])
    if report["occ"]["bad2"] is not None:
        print(
            f"occluded     : {args.method} bad2 {report['occ']['bad2']:.2f} on {occ_pct:.1f} % of the GT pixels = "
            f"{occ_points:.2f} of the all-pixel {report['bad2']:.2f} points (left border {border_pct:.1f} % of the "
            f"pixels, {border_points:.2f} points)"
        )
    # Points floating between an object and its background in the cloud (evaluation.flying_pixel_mask).
    flying = f"{report['flying']:.2f} %" if report["flying"] is not None else "-"
    if "both" in report and report["compare"].get("flying") is not None:
        flying += f"  sgbm {report['compare']['flying']:.2f} %"
    print(f"flying pixels (between two GT surfaces, > 2 px from both): {args.method} {flying}")
    if len(report["scenes"]) > 1:
        print_scene_table(report["scenes"], method=args.method)
    print(f"report: {args.out / 'report.json'}")
    return 0


def print_scene_table(scenes: list[dict], *, method: str) -> None:
    """One line per scene: bad-2 % all / non-occluded / where both predict, and the comparison's."""

    def pct(section: dict | None, key: str = "bad2") -> str:
        value = None if section is None else section.get(key)
        return "-" if value is None else f"{value:.2f}"

    width = max(len("scene"), *(len(s["name"]) for s in scenes))
    compare = any("compare" in s for s in scenes)
    header = f"{'scene':<{width}}  {method} bad2 all / noc" + (" / both   sgbm all / noc / both" if compare else "")
    print(header)
    for s in scenes:
        line = f"{s['name']:<{width}}  {pct(s)} / {pct(s.get('noc'))}"
        if compare:
            c = s.get("compare", {})
            line += f" / {pct(s.get('both'))}   {pct(c.get('all'))} / {pct(c.get('noc'))} / {pct(c.get('both'))}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
