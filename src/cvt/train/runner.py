"""``fit(config)``: one whole training run, from a recipe to checkpoints, metrics, plots and a summary.

What a run directory holds (rank 0 alone writes it)::

    config.yaml          the resolved recipe (after --set overrides)
    last.pt              full training state, every epoch (and every run.checkpoint_every_steps steps)
    best.pt              the same, at the best validation top-1
    best.safetensors     the best model's weights as a cvt-torch file (config, labels, preprocessing inside):
                         cvt predict / cvt eval --weights and create_model(weights=) read it
    final.safetensors    the same for the weights the run ended with (when the validation split is also
                         the test split, as with digits, report these: picking the best epoch on it is optimistic)
    metrics.jsonl        one JSON line per epoch
    summary.json         the end-of-run numbers
    learning_curve.png   loss and top-1 per epoch, training and validation
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import CvTConfig
from ..core.errors import CvtError
from ..core.files import atomic_write
from ..core.spec import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess, PretrainedSpec
from ..data.augment import MixupCutmix, TrainTransform
from ..data.datasets import DataError, DigitsImages, EvalSet, TrainSet, build_sources, collate, svc_baseline
from ..data.transforms import build_eval_transform
from ..eval import evaluate
from ..weights.io import save_native
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig, TrainConfigError, default_out_dir, load_config, validate
from .ema import ModelEma
from .loop import EpochSums, Schedule, TrainingDiverged, TrainParts, train_one_epoch
from .optim import build_optimizer
from .sampler import EpochBatchSampler, ShardSampler

log = logging.getLogger(__name__)

OWNED_FILES = ("last.pt", "best.pt", "best.safetensors", "final.safetensors", "metrics.jsonl", "summary.json",
               "learning_curve.png", "config.yaml")  # fmt: skip


class TrainError(CvtError, RuntimeError):
    """A run that cannot start or go on (existing run directory, mismatched checkpoint): one line."""


@dataclass
class FitResult:
    """What :func:`fit` returns (also written to ``summary.json``)."""

    out_dir: Path
    history: list[dict[str, Any]]
    best_top1: float | None
    best_epoch: int | None
    best_weights: Path | None
    last_checkpoint: Path | None
    train_seconds: float
    skipped_images: int
    baseline: dict[str, float] = field(default_factory=dict)  # digits: {"svc_rbf_top1": ...}

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def fit(
    config: TrainConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    model: nn.Module | None = None,
    echo: Callable[[str], None] = print,
) -> FitResult:
    """Train as ``config`` says (a recipe path, a mapping, a :class:`TrainConfig`, or ``None`` for digits).

    Args:
        overrides: ``"section.key=value"`` strings applied on top of the recipe.
        out: the run directory (default ``run.out``, else ``runs/<recipe name>``).
        resume: continue from ``OUT/last.pt`` (model, optimizer, scaler, EMA, epoch, step, sampler
            position, RNG states); starts fresh, saying so, when there is none.
        overwrite: start again in a directory that holds a run (its files are replaced).
        model: train this module instead of building ``model.name`` / ``model.spec`` (it must return
            ``(B, num_classes)`` logits for the data's classes).
        echo: where progress lines go (rank 0 only).

    Raises :class:`~cvt.train.config.TrainConfigError` / :class:`~cvt.data.datasets.DataError` /
    :class:`TrainError` before training for bad recipes and data; :class:`TrainingDiverged` on a NaN/inf loss.
    """
    cfg = load_config(config, overrides)
    if out is not None:
        cfg.run.out = str(out)
    config_path = config if isinstance(config, (str, os.PathLike)) else None
    out_dir = default_out_dir(cfg, config_path)
    cfg.run.out = str(out_dir)
    validate(cfg, check_paths=True)
    created = not torch.distributed.is_initialized()
    info, device = distributed.setup(cfg.run.device)
    try:
        return _Run(cfg, out_dir, info, device, echo if info.is_main else (lambda _s: None)).go(
            resume, overwrite, model
        )
    finally:
        if created:
            distributed.cleanup(info)


class _Run:
    def __init__(self, cfg: TrainConfig, out: Path, info: distributed.DistInfo, device: torch.device,
                 echo: Callable[[str], None]):  # fmt: skip
        self.cfg, self.out, self.info, self.device, self.echo = cfg, out, info, device, echo

    # ------------------------------------------------------------------ set-up
    def go(self, resume: bool, overwrite: bool, model: nn.Module | None) -> FitResult:
        cfg, info, device = self.cfg, self.info, self.device
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        tb_writer_cls = self._tensorboard_class() if cfg.run.tensorboard else None

        # 1. data (every problem with it is reported here, before a model exists)
        d = cfg.data
        bundle = build_sources(d.kind, root=d.root, train_list=d.train, val_list=d.val,
                               val_fraction=d.val_fraction, split_seed=d.split_seed,
                               max_train=d.max_train_samples, max_val=d.max_val_samples)  # fmt: skip
        if len(bundle.train) < d.batch_size:
            raise TrainConfigError(
                f"data.batch_size: {d.batch_size} is larger than the training set ({len(bundle.train)} images)"
            )
        self.bundle, self.classes = bundle, bundle.classes
        mean, std = d.mean or IMAGENET_MEAN, d.std or IMAGENET_STD
        self.eval_pre = EvalPreprocess(img_size=d.img_size, crop_pct=d.crop_pct, interpolation=d.interpolation,
                                       mean=tuple(mean), std=tuple(std))  # fmt: skip
        a = cfg.augment
        train_tf = TrainTransform(
            d.img_size, mean, std, random_resized_crop=a.random_resized_crop, scale=a.scale, ratio=a.ratio,
            translate=a.translate, hflip=a.hflip, color_jitter=a.color_jitter, randaugment=a.randaugment,
            random_erasing=a.random_erasing, interpolation=d.interpolation,
        )  # fmt: skip

        # 2. the run directory
        last = ckpt.find_last(self.out)
        if last is not None and not resume and not overwrite:
            raise TrainError(
                f"{self.out} already holds a run ({last.name}): add --resume to continue it, --overwrite to "
                "start again, or choose another --out"
            )
        if overwrite and not resume and info.is_main:
            for name in OWNED_FILES:
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
        distributed.barrier(info)
        resume_from = ckpt.find_last(self.out) if resume else None

        # 3. model, optimizer, AMP, EMA
        num_classes = len(self.classes)
        raw = model if model is not None else self._build_model(num_classes)
        self.model_config = self._model_config(raw, num_classes)
        if cfg.run.channels_last:
            raw = raw.to(memory_format=torch.channels_last)
        raw.to(device)
        if cfg.run.sync_bn and info.enabled:
            if device.type != "cuda":
                self.echo("run.sync_bn: SyncBatchNorm needs CUDA; keeping per-process BatchNorm on CPU")
            else:
                raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
        raw.train()
        self.raw = raw
        base_lr = cfg.scaled_lr()
        optimizer = build_optimizer(raw, cfg.optim, base_lr)
        amp_dtype, scaler = self._amp()
        ema = ModelEma(raw, cfg.run.ema) if cfg.run.ema else None

        sampler = EpochBatchSampler(len(bundle.train), d.batch_size, rank=info.rank, world_size=info.world_size,
                                    accum_steps=cfg.optim.accum_steps, seed=cfg.run.seed)  # fmt: skip
        spe = sampler.steps_per_epoch
        s = cfg.schedule
        schedule = Schedule(total_steps=s.epochs * spe, warmup_steps=round(s.warmup_epochs * spe),
                            base_lr=base_lr, warmup_lr=s.warmup_lr, min_lr=s.min_lr)  # fmt: skip

        # 4. resume
        state = _fresh_state()
        if resume_from is not None:
            state = self._restore(resume_from, raw, optimizer, scaler, ema)
        elif resume:
            self.echo(f"no checkpoint in {self.out}: starting a fresh run")

        # 5. wrappers
        fwd: nn.Module = raw
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.run.compile:
            fwd = torch.compile(fwd)

        mix = None
        if a.mixup > 0 or a.cutmix > 0:
            mix = MixupCutmix(num_classes, a.mixup, a.cutmix, a.mix_prob, a.switch_prob, a.label_smoothing)
        parts = TrainParts(
            model=fwd, raw_model=raw, optimizer=optimizer, schedule=schedule, device=device,
            num_classes=num_classes, seed=cfg.run.seed, accum_steps=cfg.optim.accum_steps,
            clip_grad=cfg.optim.clip_grad, amp_dtype=amp_dtype, scaler=scaler, ema=ema, mixup=mix,
            label_smoothing=a.label_smoothing, channels_last=cfg.run.channels_last, dist=info,
        )  # fmt: skip
        pin = device.type == "cuda"
        train_loader = torch.utils.data.DataLoader(
            TrainSet(bundle.train, train_tf, cfg.run.seed), batch_sampler=sampler, num_workers=d.workers,
            collate_fn=collate, pin_memory=pin, persistent_workers=d.workers > 0,
            generator=torch.Generator().manual_seed(cfg.run.seed),  # keeps the global generator untouched
        )  # fmt: skip
        val_loader = torch.utils.data.DataLoader(
            EvalSet(bundle.val, build_eval_transform(self.eval_pre)), batch_size=d.eval_batch_size,
            sampler=ShardSampler(len(bundle.val), info.rank, info.world_size), num_workers=d.workers,
            collate_fn=collate, pin_memory=pin, persistent_workers=d.workers > 0,
            generator=torch.Generator().manual_seed(cfg.run.seed),
        )  # fmt: skip

        if info.is_main:
            header = "# resolved recipe written by cvt train; run it again with: cvt train --config THIS_FILE\n"
            text = header + cfg.to_yaml()
            atomic_write(self.out / "config.yaml", lambda tmp: tmp.write_text(text))
        tb = tb_writer_cls(str(self.out / "tensorboard")) if (tb_writer_cls and info.is_main) else None
        self._announce(raw, spe, base_lr, amp_dtype, state)

        # 6. epochs
        self.parts, self.optimizer, self.scaler, self.ema = parts, optimizer, scaler, ema
        self.sampler, self.spe = sampler, spe
        try:
            self._epochs(state, train_loader, val_loader, tb)
        except TrainingDiverged as e:
            good = ckpt.find_last(self.out)
            where = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"{e}; {where}. Try a lower optim.lr, optim.clip_grad, or run.amp: off / bf16"
            ) from None
        finally:
            if tb is not None:
                tb.close()
        return self._finish(state)

    def _build_model(self, num_classes: int) -> nn.Module:
        from ..factory import create_model

        m = self.cfg.model
        mcfg = self.cfg.resolve_model_config(num_classes)
        weights = m.weights
        if m.pretrained:
            from ..core.presets import get_checkpoint
            from ..weights.hub import download_checkpoint

            weights = download_checkpoint(get_checkpoint(str(m.name)))
        if weights is not None:
            model = create_model(mcfg, weights=weights, num_classes=num_classes)
            model.train()  # create_model hands loaded models back in eval mode
            self.echo(f"initialised from {weights}: {getattr(model, 'load_report', '')}")
        else:
            torch.manual_seed(self.cfg.run.seed)  # the same initial weights in every process
            model = create_model(mcfg)
        return model

    def _model_config(self, model: nn.Module, num_classes: int) -> CvTConfig | None:
        """The architecture; what inference needs (class names, preprocessing) goes in ``model.pretrained_cfg``."""
        config = getattr(model, "config", None)
        if not isinstance(config, CvTConfig):
            return None
        config = config.replace(num_classes=num_classes)
        model.config = config
        model.pretrained_cfg = self.spec = PretrainedSpec(self.eval_pre, tuple(self.classes), source="cvt train")
        return config

    def _amp(self) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
        mode, dev = self.cfg.run.amp, self.device
        if mode == "off" or (mode == "auto" and dev.type != "cuda"):
            return None, None  # fp32 on CPU: bf16 autocast there is slower than fp32 for these shapes
        if mode == "auto":
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if mode == "bf16":
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler(dev.type)

    def _tensorboard_class(self) -> type:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainConfigError("run.tensorboard: needs the tensorboard package (pip install tensorboard)") from None
        return SummaryWriter

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.raw.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "state": json.loads(json.dumps(state)),  # plain types only: loadable with weights_only=True
            "rng": ckpt.capture_rng(),
            "config": self.cfg.to_dict(),
            "model_config": self.model_config.to_dict() if self.model_config is not None else None,
            "classes": list(self.classes),
        }

    def _restore(self, path: Path, raw: nn.Module, optimizer, scaler, ema) -> dict[str, Any]:
        ck = ckpt.load_checkpoint(path)
        if ck.get("classes") != list(self.classes):
            raise TrainError(f"{path}: the checkpoint's classes differ from the data's; use a new --out")
        if self.model_config is not None and ck.get("model_config"):
            saved = CvTConfig.from_dict(ck["model_config"])
            if saved != self.model_config:
                raise TrainError(f"{path}: the checkpoint holds a different model than the recipe; use a new --out")
        changed = _diff(ck.get("config", {}), self.cfg.to_dict())
        changed = [k for k in changed if not k.startswith(("run.out", "run.progress", "recipe."))]
        if changed:
            self.echo(f"note: resuming with recipe changes: {', '.join(changed[:8])}")
        raw.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema"):
            ema.load_state_dict(ck["ema"])
        ckpt.restore_rng(ck["rng"])
        state = dict(ck["state"])
        where = f"epoch {state['epoch'] + 1}, step {state['step_in_epoch']}" if state["step_in_epoch"] else (
            f"the end of epoch {state['epoch']}")  # fmt: skip
        self.echo(f"resumed from {path} at {where} (global step {state['step']})")
        if self.info.is_main:  # the log may hold lines written after this checkpoint: rewrite it from the state
            lines = "".join(json.dumps(h) + "\n" for h in state["history"])
            atomic_write(self.out / "metrics.jsonl", lambda tmp: tmp.write_text(lines))
        return state

    def _save(self, name: str, state: dict[str, Any]) -> None:
        if self.info.is_main:
            ckpt.save_checkpoint(self.out / name, self._payload(state))

    def _export_best(self, model: nn.Module) -> None:
        if self.info.is_main and self.model_config is not None:
            save_native(model.state_dict(), self.model_config, self.out / "best.safetensors", self.spec)

    # ------------------------------------------------------------------ the epochs
    def _epochs(self, state: dict[str, Any], train_loader, val_loader, tb) -> None:
        cfg, info = self.cfg, self.info
        epochs = cfg.schedule.epochs
        skipped_files: list[str] = []
        t_run, first_epoch = time.perf_counter(), state["epoch"]
        for epoch in range(state["epoch"], epochs):
            start = state["step_in_epoch"]
            sums = EpochSums(**state["sums"]) if start else EpochSums()
            self.sampler.set_epoch(epoch, start)

            def on_step(step: int, k: int, sums: EpochSums, epoch: int = epoch) -> None:
                every = cfg.run.checkpoint_every_steps
                if every and k % every == 0 and k < self.spe:
                    state.update(step=step, step_in_epoch=k, sums=sums.to_dict(), epoch=epoch)
                    self._save(ckpt.LAST, state)

            step, sums = train_one_epoch(
                self.parts, train_loader, epoch=epoch, step=state["step"], start_step=start,
                steps_per_epoch=self.spe, sums=sums, on_step=on_step, progress=cfg.run.progress and info.is_main,
                skipped_files=skipped_files,
            )  # fmt: skip
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": step,
                "lr": self.parts.schedule.lr(step - 1),
                "train_loss": sums.loss / max(sums.images, 1),
                "train_top1": sums.correct / max(sums.images, 1),
                "train_images_per_s": sums.images / max(sums.seconds, 1e-9),
                "epoch_seconds": sums.seconds,
                "skipped_images": int(sums.skipped),
            }
            if (epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == epochs:
                record.update(self._validate(val_loader))
            state["history"].append(record)
            state.update(epoch=epoch + 1, step=step, step_in_epoch=0, sums=EpochSums().to_dict())
            state["skipped_total"] = state.get("skipped_total", 0) + int(sums.skipped)
            state["train_seconds"] = state.get("train_seconds", 0.0) + sums.seconds
            top1 = record.get("val_top1")
            is_best = top1 is not None and (state["best"] is None or top1 > state["best"])
            if is_best:
                state.update(best=top1, best_epoch=epoch + 1)
            self._save(ckpt.LAST, state)
            if is_best:
                self._save(ckpt.BEST, state)
                self._export_best(self.ema.module if self.ema is not None else self.raw)
            if info.is_main:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if tb is not None:
                    for k, v in record.items():
                        if isinstance(v, (int, float)) and k != "epoch":
                            tb.add_scalar(k, v, epoch + 1)
            self.echo(_epoch_line(record, epochs, time.perf_counter() - t_run, epoch + 1 - first_epoch))
            if sums.skipped:
                first = skipped_files[0] if skipped_files else "?"
                self.echo(f"  skipped {int(sums.skipped)} unreadable image(s) this epoch (first: {first})")

    def _validate(self, val_loader) -> dict[str, Any]:
        model = self.ema.module if self.ema is not None else self.raw
        distributed.broadcast_buffers(model, self.info)
        res = evaluate(model, val_loader, len(self.classes), device=self.device, amp_dtype=self.parts.amp_dtype,
                       channels_last=self.cfg.run.channels_last, dist=self.info)  # fmt: skip
        self.last_eval = res
        return {"val_loss": res["loss"], "val_top1": res["top1"], "val_top5": res["top5"],
                "val_images": res["n"]}  # fmt: skip

    # ------------------------------------------------------------------ the end
    def _finish(self, state: dict[str, Any]) -> FitResult:
        cfg, out = self.cfg, self.out
        baseline: dict[str, float] = {}
        b = self.bundle
        if self.info.is_main and cfg.run.baseline and isinstance(b.train, DigitsImages):
            baseline["svc_rbf_top1"] = svc_baseline(b.train, b.val)  # the very images the CvT saw
        result = FitResult(
            out_dir=out, history=state["history"], best_top1=state["best"], best_epoch=state["best_epoch"],
            best_weights=(out / "best.safetensors") if (out / "best.safetensors").is_file() else None,
            last_checkpoint=ckpt.find_last(out), train_seconds=state.get("train_seconds", 0.0),
            skipped_images=int(state.get("skipped_total", 0)), baseline=baseline,
        )  # fmt: skip
        if self.info.is_main and self.model_config is not None:  # the weights the run ended with
            final = self.ema.module if self.ema is not None else self.raw
            save_native(final.state_dict(), self.model_config, out / "final.safetensors", self.spec)
        if self.info.is_main:
            curve = None
            if cfg.run.plots:
                from .plots import learning_curve

                title = f"{self.model_config.name if self.model_config else 'model'} on {cfg.data.kind}"
                curve = learning_curve(state["history"], out / "learning_curve.png", title)
            summary = {
                "best_val_top1": result.best_top1,
                "best_epoch": result.best_epoch,
                "final": result.final,
                "baseline": baseline,
                "train_seconds": result.train_seconds,
                "skipped_images": result.skipped_images,
                "classes": list(self.classes),
                "model": self.model_config.name if self.model_config else type(self.raw).__name__,
                "parameters": sum(p.numel() for p in self.raw.parameters()),
                "processes": self.info.world_size,
            }
            text = json.dumps(summary, indent=2) + "\n"
            atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text))
            self.echo(_table(state["history"], result, baseline, out, curve))
        distributed.barrier(self.info)
        return result

    def _announce(self, raw: nn.Module, spe: int, lr: float, amp_dtype, state: dict[str, Any]) -> None:
        cfg, b = self.cfg, self.bundle
        n_params = sum(p.numel() for p in raw.parameters())
        name = self.model_config.name if self.model_config else type(raw).__name__
        micro = cfg.data.batch_size // (self.info.world_size * cfg.optim.accum_steps)
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}[amp_dtype]
        self.echo(
            f"cvt train: {name} ({n_params / 1e6:.2f}M parameters) on {cfg.data.kind}: {len(b.train)} training / "
            f"{len(b.val)} validation images, {len(self.classes)} classes"
        )
        self.echo(
            f"  {self.device} ({amp}), {self.info.world_size} process(es), global batch {cfg.data.batch_size} "
            f"({micro} x {self.info.world_size} process(es) x {cfg.optim.accum_steps} accumulation), "
            f"lr {lr:.2e} ({cfg.optim.name}), {cfg.schedule.epochs} epochs x {spe} steps; out: {self.out}"
        )


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "step": 0, "step_in_epoch": 0, "sums": EpochSums().to_dict(), "best": None,
            "best_epoch": None, "history": [], "skipped_total": 0, "train_seconds": 0.0}  # fmt: skip


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else (
        f"{seconds // 60}:{seconds % 60:02d}")  # fmt: skip


def _epoch_line(r: dict[str, Any], epochs: int, elapsed: float, done_here: int) -> str:
    eta = elapsed / max(done_here, 1) * (epochs - r["epoch"])
    val = f"  val loss {r['val_loss']:.4f} top-1 {100 * r['val_top1']:.2f}%" if "val_top1" in r else ""
    return (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} top-1 {100 * r['train_top1']:.1f}%{val}"
        f"  lr {r['lr']:.2e}  {r['train_images_per_s']:.0f} img/s  {r['epoch_seconds']:.1f}s  eta {_fmt_time(eta)}"
    )


def _table(history: list[dict[str, Any]], res: FitResult, baseline: dict[str, float], out: Path,
           curve: Path | None) -> str:  # fmt: skip
    rows = history if len(history) <= 12 else history[:3] + history[-8:]
    lines = ["", f"{'epoch':>5} {'train loss':>10} {'train top-1':>11} {'val loss':>9} {'val top-1':>9} "
             f"{'val top-5':>9} {'lr':>9} {'time':>7}"]  # fmt: skip
    for i, h in enumerate(rows):
        if len(history) > 12 and i == 3:
            lines.append(f"{'...':>5}")
        v = (f"{h['val_loss']:>9.4f} {100 * h['val_top1']:>8.2f}% {100 * h['val_top5']:>8.2f}%" if "val_top1" in h
             else f"{'-':>9} {'-':>9} {'-':>9}")  # fmt: skip
        lines.append(f"{h['epoch']:>5} {h['train_loss']:>10.4f} {100 * h['train_top1']:>10.2f}% {v} "
                     f"{h['lr']:>9.2e} {h['epoch_seconds']:>6.1f}s")  # fmt: skip
    if res.best_top1 is not None:
        final = res.final.get("val_top1")
        line = f"validation top-1: final {100 * final:.2f}%" if final is not None else "validation top-1:"
        line += f", best {100 * res.best_top1:.2f}% (epoch {res.best_epoch})"
        if "svc_rbf_top1" in baseline:
            line += f"   |   scikit-learn SVC (RBF) on the same split: {100 * baseline['svc_rbf_top1']:.2f}%"
        lines.append(line)
    lines.append(f"training time: {res.train_seconds:.1f} s over {len(history)} epochs"
                 + (f"; {res.skipped_images} unreadable images skipped" if res.skipped_images else ""))  # fmt: skip
    files = [
        p.name
        for p in (res.best_weights, out / "final.safetensors", res.last_checkpoint, curve)
        if p is not None and p.exists()
    ]
    lines.append(f"outputs in {out}/: {', '.join([*files, 'metrics.jsonl', 'summary.json', 'config.yaml'])}")
    return "\n".join(lines)


__all__ = ["DataError", "FitResult", "TrainError", "TrainingDiverged", "fit"]
