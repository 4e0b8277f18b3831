"""The training loop shared by pre-training (stage 1) and S2DKD fine-tuning (stage 2).

AdamW + one-cycle learning rate, gradient clipping, AMP on CUDA, DDP under ``torchrun``, checkpoints
every N steps / M minutes and on SIGINT/SIGTERM, exact resume, TensorBoard, tqdm, periodic validation on
the Middlebury motorcycle pair.

Output folder layout (``out``)::

    config.yaml               the resolved recipe (checked on --resume)
    metrics.jsonl             one line per optimizer step (loss terms, lr, grad norm) and per validation
    tb/                       TensorBoard event files
    checkpoints/step_NNNNNNN.safetensors (+ .json sidecar)   model weights (``models.save_checkpoint``)
    checkpoints/step_NNNNNNN.state.safetensors / .state.json  optimizer, scheduler, RNG and loop state
    best.safetensors (+ .json) the weights with the lowest validation bad-2 so far (what to deploy)
    latest.json               pointer to the newest complete checkpoint (written last, atomically)

Nothing is pickled: tensors go to safetensors, everything else to JSON (floats round-trip exactly
through ``repr``), so a resumed run continues bit-for-bit: the next step sees the same weights,
optimizer moments, learning rate and batch as the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .config import config_hash, dump_config
from .distributed import (
    DistributedContext,
    ResumableDistributedSampler,
    average_scalar,
    broadcast_buffers,
    broadcast_flag,
)

LossFn = Callable[[Any, Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def atomic_write_text(path: Path, text: str) -> None:
    """Writes via a temporary file in the same folder + ``os.replace`` so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, *, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare stereo network behind DDP and the training-forward adapter."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if isinstance(model, TrainForward):
        model = model.network
    return model


class TrainForward(nn.Module):
    """Routes ``forward`` to the network's ``forward_train``.

    DDP only synchronises gradients for computations that go through the wrapped module's ``forward``;
    calling ``ddp.module.forward_train`` directly would silently train each rank on its own.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, left: torch.Tensor, right: torch.Tensor):
        return self.network.forward_train(left, right)


# ---------------------------------------------------------------------------------------------------------
# Optimizer / scheduler state <-> safetensors + JSON.


def optimizer_state_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_files(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    return tensors


def rng_state_json() -> dict[str, Any]:
    version, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "numpy": [version, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
    }


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    version, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((version, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


# ---------------------------------------------------------------------------------------------------------
# Validation on the Middlebury motorcycle pair.


class GroundTruthValidation:
    """Zero-shot validation on scenes with ground truth, against OpenCV SGBM on the same scenes.

    ``spec`` is ``"motorcycle"`` (``skimage.data.stereo_motorcycle()``, bundled, never trained on) or a
    Middlebury/KITTI folder (``datasets_gt.load_gt_dataset``). Each pair runs at full resolution, padded
    (edge replication) to the network stride and cropped back, and is scored with
    ``evaluation.evaluate_disparity`` over ground-truth-valid pixels (holes count as errors): all pixels
    (``bad2``...), non-occluded ones (``noc_bad2``) and the pixels SGBM also predicts (``both_bad2``, next
    to SGBM's own ``sgbm_both_bad2``), the fair accuracy comparison. Scenes pool by pixel counts.
    """

    def __init__(self, spec: str = "motorcycle"):
        from ..datasets_gt import load_gt_dataset
        from ..evaluation import sgbm_disparity, sgbm_num_disparities

        self.spec = str(spec)
        self.samples = []
        for sample in load_gt_dataset(spec):
            gt = np.asarray(sample.disparity, dtype=np.float32).copy()
            gt[~np.isfinite(gt)] = np.nan
            left, right = np.ascontiguousarray(sample.left), np.ascontiguousarray(sample.right)
            sgbm = sgbm_disparity(left, right, num_disparities=sgbm_num_disparities(float(np.nanmax(gt))))
            self.samples.append((sample.name, left, right, gt, sgbm))

    def __call__(self, network: nn.Module, *, device: torch.device) -> tuple[dict[str, float], np.ndarray]:
        """Pooled metrics over all scenes, and the first scene's prediction (for the TensorBoard image)."""
        from ..evaluation import evaluate_disparity
        from .datasets import predict_pair

        pooled: dict[str, Any] = {}
        first = None
        for _, left, right, gt, sgbm in self.samples:
            disparity = predict_pair(network, left, right, device=device)
            first = disparity if first is None else first
            for region, counts in evaluate_disparity(disparity, gt, compare=sgbm).items():
                pooled[region] = counts if region not in pooled else pooled[region] + counts
        metrics = {key: float(value) for key, value in pooled["all"].as_dict().items()}
        metrics.update(
            {
                "noc_bad2": float(pooled["noc"].bad2),
                "both_bad2": float(pooled["both"].bad2),
                "sgbm_bad2": float(pooled["compare_all"].bad2),
                "sgbm_both_bad2": float(pooled["compare_both"].bad2),
            }
        )
        return metrics, first


# ---------------------------------------------------------------------------------------------------------


class Trainer:
    """Runs ``config['optim']['steps']`` optimizer steps of ``loss_fn(model_output, batch)['total']``.

    ``model`` is the bare stereo network (with ``forward_train``); ``dataset`` yields the dicts of
    ``training.datasets``. ``sidecar`` is merged into every checkpoint's JSON sidecar (architecture,
    data description, ...). Only rank 0 writes files; every rank restores from them.
    """

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        model: nn.Module,
        dataset: Dataset,
        loss_fn: LossFn,
        out_dir: str | Path,
        context: DistributedContext,
        sidecar: Mapping[str, Any] | None = None,
        validation: Callable[..., tuple[dict[str, float], np.ndarray]] | None = None,
    ):
        self.config = config
        self.optim_cfg = config["optim"]
        self.trainer_cfg = config["trainer"]
        self.context = context
        self.device = context.device
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.network = model.to(self.device)
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.sidecar = dict(sidecar or {})
        self.validation = validation
        self.total_steps = int(self.optim_cfg["steps"])
        self.batch_size = int(self.optim_cfg["batch_size"])
        self.freeze_batchnorm = bool(self.optim_cfg.get("freeze_batchnorm", False))
        # optim.amp: false | true (= fp16) | "fp16" | "bf16"; CUDA only (the CPU always trains in fp32).
        requested = amp_dtype(self.optim_cfg["amp"])  # validated on every machine, used on CUDA only
        self.amp_dtype = requested if self.device.type == "cuda" else None
        if self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError(f"optim.amp='bf16' needs a GPU with bfloat16 (Ampere or newer); "
                             f"{torch.cuda.get_device_name(self.device)} has none: use fp16 or false")

        forward = TrainForward(self.network)
        if context.enabled:
            forward = DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.forward = forward
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(),
            lr=float(self.optim_cfg["lr"]),
            weight_decay=float(self.optim_cfg["weight_decay"]),
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=float(self.optim_cfg["lr"]),
            total_steps=self.total_steps + 1,  # OneCycleLR raises when stepped past total_steps
            pct_start=float(self.optim_cfg["pct_start"]),
            anneal_strategy="cos",
        )
        # fp16 needs loss scaling against gradient underflow; bf16 has fp32's exponent range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.sampler = ResumableDistributedSampler(
            len(dataset), rank=context.rank, world_size=context.world_size, seed=int(config["seed"])
        )
        self.batches_per_epoch = self.sampler.per_rank // self.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset of {len(dataset)} items over {context.world_size} rank(s) cannot fill one batch of "
                f"{self.batch_size}; lower optim.batch_size or add data"
            )
        self.step = 0
        # Seconds inside optimizer steps (compute) and of the whole run (data, validation, checkpoints).
        self.elapsed_s = 0.0
        self._wall_base = 0.0
        self._wall_start = time.monotonic()
        self.best: dict[str, Any] = {}
        self._stop_signal: int | None = None
        self._writer = None

    @property
    def use_amp(self) -> bool:
        return self.amp_dtype is not None

    def _train_mode(self) -> None:
        """Training mode, with the batch-norm layers in inference mode when ``optim.freeze_batchnorm`` is set.

        Called at the start of ``fit`` and after every validation (which switches the whole network to
        ``eval()`` and back to ``train()``).
        """
        self.network.train()
        if self.freeze_batchnorm:
            for module in self.network.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    @property
    def wall_s(self) -> float:
        """Wall-clock seconds of the run so far, across resumes."""
        return self._wall_base + time.monotonic() - self._wall_start

    # ----- signals ---------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        previous = {}

        def handler(signum, _frame):
            # Finish the current step, checkpoint, then leave: killing mid-write would lose the run.
            self._stop_signal = signum

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return previous

    # ----- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_sidecar(self) -> dict[str, Any]:
        sidecar = dict(self.sidecar)
        sidecar.update(
            {
                "step": self.step,
                "total_steps": self.total_steps,
                "config_hash": config_hash(self.config),
                "training_wall_time_s": round(self.wall_s, 1),
                "training_step_time_s": round(self.elapsed_s, 1),
            }
        )
        if self.best:
            sidecar["validation"] = self.best
        return sidecar

    def save(self, *, reason: str) -> Path | None:
        """Writes weights + state for the current step; returns the weights path (rank 0 only)."""
        if not self.context.is_main:
            return None
        from ..models import save_checkpoint

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        stem = f"step_{self.step:07d}"
        weights = self.ckpt_dir / f"{stem}.safetensors"
        save_checkpoint(weights, unwrap(self.network), sidecar=self.checkpoint_sidecar())
        opt_tensors, opt_meta = optimizer_state_to_files(self.optimizer)
        tensors = {**opt_tensors, **rng_state_tensors()}
        atomic_save_tensors(tensors, self.ckpt_dir / f"{stem}.state.safetensors")
        epoch, position = divmod(self.step, self.batches_per_epoch)
        state = {
            "step": self.step,
            "epoch": epoch,
            "batch_in_epoch": position,
            "optimizer": opt_meta,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state_json(),
            "elapsed_s": self.elapsed_s,
            "wall_s": self.wall_s,
            "best": self.best,
            "config_hash": config_hash(self.config),
            "world_size": self.context.world_size,
            "reason": reason,
        }
        atomic_write_text(self.ckpt_dir / f"{stem}.state.json", json.dumps(state))
        # The pointer is the commit: a crash before this line leaves the previous checkpoint current.
        atomic_write_text(
            self.out_dir / "latest.json",
            json.dumps({"step": self.step, "weights": f"checkpoints/{stem}.safetensors", "state": f"checkpoints/{stem}.state"}),
        )
        self._prune()
        return weights

    def _prune(self) -> None:
        keep = int(self.trainer_cfg.get("keep_checkpoints", 3))
        if keep <= 0:
            return
        stems = sorted(p.name[: -len(".state.json")] for p in self.ckpt_dir.glob("step_*.state.json"))
        for stem in stems[:-keep]:
            for path in self.ckpt_dir.glob(f"{stem}.*"):
                path.unlink(missing_ok=True)

    def resume(self) -> bool:
        """Restores the newest complete checkpoint of ``out_dir``; False when there is none."""
        pointer = self.out_dir / "latest.json"
        if not pointer.is_file():
            return False
        latest = json.loads(pointer.read_text())
        weights_path = self.out_dir / latest["weights"]
        state_base = self.out_dir / latest["state"]
        state = json.loads(Path(f"{state_base}.json").read_text())
        if state["config_hash"] != config_hash(self.config):
            raise ValueError(
                f"cannot resume {self.out_dir}: its checkpoint was trained with config hash {state['config_hash']} "
                f"but this run's config hashes to {config_hash(self.config)} (compare {self.out_dir / 'config.yaml'})"
            )
        if state["world_size"] != self.context.world_size:
            raise ValueError(
                f"cannot resume exactly: {self.out_dir} was trained on {state['world_size']} process(es), "
                f"this run has {self.context.world_size}"
            )
        load_network_weights(unwrap(self.network), weights_path)
        tensors = load_file(f"{state_base}.safetensors", device="cpu")
        self.optimizer.load_state_dict(optimizer_state_from_files(tensors, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(tensors, state["rng"])
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        self._wall_base = float(state.get("wall_s", self.elapsed_s))
        self._wall_start = time.monotonic()
        self.best = dict(state.get("best") or {})
        return True

    # ----- logging ---------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            prefix = "val" if record.get("kind") == "validation" else "train"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def _log_images(self, batch: Mapping[str, torch.Tensor], output: Any) -> None:
        if self._writer is None:
            return
        from ..viz import colorize_disparity

        gt = batch["disparity"][0, 0].detach().float().cpu().numpy()
        valid = batch["valid"][0, 0].cpu().numpy().astype(bool)
        pred = output.disparity[0, 0].detach().float().cpu().numpy()
        vmax = float(max(gt[valid].max() if valid.any() else 1.0, 1.0))
        gt_shown = np.where(valid, gt, np.nan)
        self._writer.add_image("train/left", batch["left"][0].detach().cpu(), self.step)
        self._writer.add_image("train/disparity_pred", colorize_disparity(pred, vmin=0, vmax=vmax), self.step, dataformats="HWC")
        self._writer.add_image("train/disparity_gt", colorize_disparity(gt_shown, vmin=0, vmax=vmax), self.step, dataformats="HWC")

    def _validate(self) -> None:
        if self.validation is None or not self.context.is_main:
            return
        started = time.perf_counter()
        metrics, disparity = self.validation(unwrap(self.network), device=self.device)
        record = {"kind": "validation", "step": self.step, **metrics, "seconds": time.perf_counter() - started}
        improved = "bad2" in metrics and (not self.best or metrics["bad2"] < self.best.get("bad2", math.inf))
        if improved:
            self.best = {"step": self.step, **metrics}
        self._log(record)
        if self._writer is not None:
            from ..viz import colorize_disparity

            self._writer.add_image("val/disparity", colorize_disparity(disparity, vmin=0), self.step, dataformats="HWC")
        if improved:
            self._save_best()
        self._train_mode()

    def _save_best(self) -> None:
        from ..models import save_checkpoint

        save_checkpoint(self.out_dir / "best.safetensors", unwrap(self.network), sidecar=self.checkpoint_sidecar())

    # ----- loop ------------------------------------------------------------------------------------------
    def _loader(self, epoch: int, position: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.sampler.start_at(position * self.batch_size)
        workers = int(self.trainer_cfg["workers"])
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], Any, float]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()
        with autocast:
            output = self.forward(batch["left"], batch["right"])
        # Losses in fp32: the KL/log-softmax terms underflow in half precision.
        losses = self.loss_fn(output, batch)
        total = losses["total"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss {float(total)} at step {self.step + 1}; lower optim.lr or check the data")
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), float(self.optim_cfg["grad_clip"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        values = {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}
        return values, output, float(grad_norm)

    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Trains to ``optim.steps``; returns ``{"status": "finished"|"interrupted", "step", ...}``."""
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.config, self.out_dir / "config.yaml")
        self._wall_start = time.monotonic()
        resumed = self.resume() if resume else False
        if not resumed:
            seed_everything(int(self.config["seed"]) + self.context.rank)
        if self.context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step if resumed else None)
        previous = self._install_signal_handlers()
        status = "finished"
        log_every = int(self.trainer_cfg["log_every"])
        ckpt_every = int(self.trainer_cfg["checkpoint_every"])
        ckpt_minutes = float(self.trainer_cfg["checkpoint_minutes"])
        val_every = int(self.trainer_cfg["validate_every"])
        image_every = int(self.trainer_cfg["image_every"])
        progress = None
        if self.context.is_main and self.trainer_cfg.get("progress", True):
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True)
        last_ckpt = time.monotonic()
        self._train_mode()
        try:
            while self.step < self.total_steps:
                epoch, position = divmod(self.step, self.batches_per_epoch)
                for batch in self._loader(epoch, position):
                    started = time.perf_counter()
                    values, output, grad_norm = self.train_step(batch)
                    self.step += 1
                    step_s = time.perf_counter() - started
                    self.elapsed_s += step_s
                    values = {k: average_scalar(v, self.context) for k, v in values.items()}
                    record = {"step": self.step, "epoch": epoch, **values, "lr": self.scheduler.get_last_lr()[0],
                              "grad_norm": grad_norm, "step_s": step_s}
                    if self.context.is_main:
                        with open(self.out_dir / "metrics.jsonl", "a") as handle:
                            handle.write(json.dumps(record) + "\n")
                        if self._writer is not None and log_every and self.step % log_every == 0:
                            for key, value in record.items():
                                if key not in ("step", "epoch"):
                                    self._writer.add_scalar(f"train/{key}", value, self.step)
                        if image_every and self.step % image_every == 0:
                            self._log_images(batch, output)
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{values['total']:.3f}", lr=f"{record['lr']:.2e}")
                    if val_every and self.step % val_every == 0:
                        self._validate()
                    stop = broadcast_flag(self._stop_signal is not None, self.context)
                    timed = ckpt_minutes > 0 and time.monotonic() - last_ckpt > ckpt_minutes * 60
                    timed = broadcast_flag(timed, self.context)
                    if stop or timed or (ckpt_every and self.step % ckpt_every == 0):
                        self.save(reason="signal" if stop else "periodic")
                        last_ckpt = time.monotonic()
                    if stop:
                        status = "interrupted"
                        break
                    if self.step >= self.total_steps:
                        break
                if status == "interrupted":
                    break
            broadcast_buffers(self.network, self.context)
            if status == "finished":
                if val_every and self.step % val_every:
                    self._validate()
                self.save(reason="finished")
        finally:
            if progress is not None:
                progress.close()
            if self._writer is not None:
                self._writer.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return {
            "status": status,
            "signal": self._stop_signal,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "wall_s": self.wall_s,
            "best": self.best,
            "checkpoint": str(self.ckpt_dir / f"step_{self.step:07d}.safetensors"),
        }


def amp_dtype(setting: Any) -> torch.dtype | None:
    """The autocast dtype of an ``optim.amp`` setting: ``false`` -> None, ``true``/``"fp16"`` -> float16,
    ``"bf16"`` -> bfloat16 (needs a GPU with bf16 support: Ampere or newer)."""
    if setting is False or setting is None or setting == "none":
        return None
    if setting is True or setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    raise ValueError(f"optim.amp must be false, true, 'fp16' or 'bf16', instead got {setting!r}")


def load_network_weights(network: nn.Module, path: str | Path) -> dict[str, Any]:
    """Loads a ``save_checkpoint`` file into ``network`` with a clear error on any mismatch.

    Refuses non-safetensors files (the header is checked before anything is parsed; no pickle on any load
    path) and checkpoints whose sidecar describes another architecture. Returns the checkpoint's sidecar.
    """
    from ..models.checkpoint import CheckpointError, check_safetensors_header, read_sidecar

    path = Path(path)
    check_safetensors_header(path)
    sidecar = read_sidecar(path)
    from ..models.stereo_net import CONVERTIBLE_SETTINGS, convert_state_dict

    wanted = dict(getattr(network, "config", {}))
    found = dict(sidecar["architecture"])
    differing = sorted(k for k in set(wanted) | set(found) if wanted.get(k) != found.get(k)) if wanted else []
    convertible = bool(differing) and set(differing) <= set(CONVERTIBLE_SETTINGS)
    if differing and not convertible:
        raise CheckpointError(
            f"checkpoint {path} holds a {found.get('name')!r} network that differs from the "
            f"{wanted.get('name')!r} being trained in {differing}: "
            + ", ".join(f"{k}={found.get(k)!r} vs {wanted.get(k)!r}" for k in differing[:4])
        )
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} is a corrupt safetensors file: {exc}") from exc
    if convertible:
        try:
            tensors = convert_state_dict(tensors, found, wanted)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc
        logging.getLogger("mono2stereo_core.training").info(
            "converted %s to the %s settings %s as a warm start", path, wanted.get("name"), differing
        )
    network.load_state_dict(tensors, strict=True)
    return sidecar


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({socket.gethostname()})"
    return f"CPU, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads ({socket.gethostname()})"
