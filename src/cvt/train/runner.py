"""``fit(config)``: one whole training run, from a recipe to checkpoints, metrics, plots and a summary.

``fit`` = :func:`~cvt.train.trainer.setup` -> restore (``--resume``) -> for each epoch:
:func:`~cvt.train.loop.train_one_epoch`, evaluate, checkpoint -> the final weights, plots and summary.
``dry_run`` = the same ``setup`` and restore, writing nothing. A run leaves the process as it found it (torch
threads, ``cudnn.benchmark``, the global torch generators, the process group it joined). Ctrl-C stops it with
:class:`TrainInterrupted` (exit status 130), naming the last checkpoint and the command that continues it.

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

import contextlib
import dataclasses
import functools
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import CvTConfig
from ..core.files import atomic_write
from ..data.datasets import DigitsImages
from ..eval import evaluate
from ..torch.weights import save_native
from . import checkpoint as ckpt
from . import distributed
from .baseline import svc_baseline
from .config import TrainConfig, default_out_dir, load_config
from .loop import TrainingDiverged, train_one_epoch
from .trainer import EpochStats, Trainer, TrainError, TrainState, check_out, setup, tensorboard_writer

Recipe = TrainConfig | str | os.PathLike[str] | Mapping[str, Any] | None


class TrainInterrupted(TrainError):
    """Ctrl-C during a run: the message names the last checkpoint and the command that continues the run.

    Every file was written atomically, so the run directory holds only whole files.
    """

    exit_code = 130  # what a shell reports for SIGINT


@dataclass
class _LastCheckpoint:
    """``last.pt`` as this run last wrote (or resumed from) it: what the message of an interrupted run names."""

    path: Path | None = None
    at: str = ""
    writing: tuple[Path, str, int | None] | None = None  # a save under way: (path, at, inode of the file before)

    def settle(self) -> None:
        """After an interrupt: a save that was under way counts if its file got published (the atomic rename puts
        a new inode at the path), even when the interrupt came before this note was updated."""
        if self.writing is not None:
            path, at, before = self.writing
            if _inode(path) not in (None, before):
                self.path, self.at = path, at
            self.writing = None


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


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
    skipped_images: int  # distinct unreadable training files over the run
    baseline: dict[str, float] = field(default_factory=dict)  # digits: {"svc_rbf_top1": ...}
    skipped_files: list[str] = field(default_factory=list)  # their paths

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def fit(
    config: Recipe = None,
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
            position); starts fresh, saying so, when there is none.
        overwrite: start again in a directory that holds a run (its files are removed first).
        model: train this module instead of building ``model.name`` / ``model.spec`` (it must return
            ``(B, num_classes)`` logits for the data's classes).
        echo: where progress lines go (rank 0 only).

    Raises :class:`~cvt.train.config.TrainConfigError` / :class:`~cvt.core.errors.DataError` /
    :class:`~cvt.core.errors.WriteError` / :class:`TrainError` before training for bad recipes, data and run
    directories; :class:`TrainingDiverged` on a NaN/inf loss; :class:`TrainInterrupted` on Ctrl-C.
    """
    notes: list[str] = []
    cfg = _resolved(config, overrides, out, notes)
    with _process_group():
        t = setup(cfg, out=cfg.run.out, resume=resume, overwrite=overwrite, model=model, echo=echo)
        last = _LastCheckpoint()
        try:
            return _train(t, cfg, notes, resume, last)
        except KeyboardInterrupt:
            raise TrainInterrupted(_interrupted(t, last, config, overrides)) from None


def _train(t: Trainer, cfg: TrainConfig, notes: list[str], resume: bool, last: _LastCheckpoint) -> FitResult:
    for note in notes:
        t.echo(note)
    with _process_settings(t):
        state = _restore(t, last) if t.resume_from is not None else TrainState()
        if resume and t.resume_from is None:
            t.echo(f"no checkpoint in {t.out}: starting a fresh run")
        if t.dist.is_main:
            text = "# resolved recipe written by cvt train; run it again with: cvt train --config THIS_FILE\n"
            atomic_write(t.out / "config.yaml", lambda tmp: tmp.write_text(text + cfg.to_yaml()))
        _announce(t)
        with _tensorboard(t) as tb, _name_last_good_checkpoint(t):
            t_run, first = time.perf_counter(), state.epoch
            for epoch in range(state.epoch, cfg.schedule.epochs):
                t.sampler.set_epoch(epoch, state.step_in_epoch)
                on_step = functools.partial(_mid_epoch, t, state, last)
                stats = train_one_epoch(t, state, t.train_loader, on_step=on_step)
                record = _record(t, state, stats)
                state = state.end_epoch(record, stats)
                _save(t, ckpt.LAST, state, last)
                if state.best_epoch == epoch + 1:
                    _save(t, ckpt.BEST, state)
                    _export(t, "best.safetensors")
                _log(t, state.history, tb, stats, time.perf_counter() - t_run, epoch + 1 - first)
        return _finish(t, state)


def dry_run(
    config: Recipe = None,
    *,
    overrides: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> str:
    """What ``cvt train --dry-run`` prints: the resolved recipe (YAML), notes, what the run directory would see,
    and ``# ok: NAME, N training / M validation images, K classes``.

    Runs every check a real start makes (:func:`setup` itself, the model built and its weights loaded, and with
    ``resume`` the checkpoint loaded into it) and fails as that start would, in the same one line; nothing is
    written or removed.
    """
    notes: list[str] = []
    cfg = _resolved(config, overrides, out, notes)
    with _process_group():
        t = setup(cfg, out=cfg.run.out, resume=resume, overwrite=overwrite, echo=notes.append, dry_run=True)
        if t.resume_from is not None:
            _restore(t, _LastCheckpoint(), write=False)  # a checkpoint for another model or data fails here too
    name = t.model_config.name if t.model_config is not None else "model"
    d = t.data
    ok = f"# ok: {name}, {len(d.train)} training / {len(d.val)} validation images, {len(d.classes)} classes"
    return "\n".join([cfg.to_yaml().rstrip("\n"), *(f"# {n}" for n in [*notes, _out_note(t)]), ok])


def _out_note(t: Trainer) -> str:
    """What a real start would do with the run directory."""
    if t.resume_from is not None:
        return f"out: {t.out}: would resume from {t.resume_from}"
    held = check_out(t.out, overwrite=True)  # setup let them pass: --overwrite, or --resume without a checkpoint
    if held:
        return f"out: {t.out}: would remove the earlier run's files ({', '.join(held)})"
    return f"out: {t.out}: a new run"


def _interrupted(t: Trainer, last: _LastCheckpoint, config: Recipe, overrides: Sequence[str]) -> str:
    """The one line for Ctrl-C: where the run can continue from, and the exact command that continues it."""
    words = ["cvt", "train"]
    if config is None or isinstance(config, (str, os.PathLike)):
        words += ["--config", os.fspath(config)] if config is not None else []
        words += [w for o in overrides for w in ("--set", o)]
    else:  # a recipe given as Python objects: the resolved copy the run wrote
        words += ["--config", str(t.out / "config.yaml")]
    command = shlex.join([*words, "--out", str(t.out), "--resume"])
    last.settle()
    if last.path is None:
        return f"interrupted before the first checkpoint (nothing to resume); start again with: {command}"
    return f"interrupted; the last checkpoint is {last.path} ({last.at}); continue with: {command}"


def _resolved(config: Recipe, overrides: Sequence[str], out: Any, notes: list[str]) -> TrainConfig:
    """The recipe with its run directory: ``out``, else ``run.out``, else ``runs/<recipe file stem>``."""
    cfg = load_config(config, overrides, echo=notes.append)
    path = config if isinstance(config, (str, os.PathLike)) else None
    out_dir = Path(out).expanduser() if out is not None else default_out_dir(cfg, path)
    return cfg.replace(run=dataclasses.replace(cfg.run, out=str(out_dir)))


@contextlib.contextmanager
def _process_group() -> Iterator[None]:
    """Leave the torchrun process group on the way out if this call joined it."""
    joined_here = not torch.distributed.is_initialized()
    try:
        yield
    finally:
        if joined_here:
            distributed.cleanup()


@contextlib.contextmanager
def _process_settings(t: Trainer) -> Iterator[None]:
    """``run.threads`` and cuDNN autotuning for the run; those and the torch generators restored afterwards."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        with torch.random.fork_rng(devices=[t.device] if t.device.type == "cuda" else []):
            if t.cfg.run.threads:
                torch.set_num_threads(t.cfg.run.threads)
            torch.backends.cudnn.benchmark = t.device.type == "cuda" or benchmark
            yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def _tensorboard(t: Trainer) -> Iterator[Any]:
    """A TensorBoard writer on rank 0 with ``run.tensorboard`` (else None), closed at the end."""
    tb = tensorboard_writer()(str(t.out / "tensorboard")) if t.cfg.run.tensorboard and t.dist.is_main else None
    try:
        yield tb
    finally:
        if tb is not None:
            tb.close()


@contextlib.contextmanager
def _name_last_good_checkpoint(t: Trainer) -> Iterator[None]:
    """A diverged run's message says where its last good checkpoint is and what to try."""
    try:
        yield
    except TrainingDiverged as e:
        good = ckpt.find_last(t.out)
        where = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{e}; {where}. Try a lower optim.lr, optim.clip_grad, or run.amp: off / bf16") from None


# ---------------------------------------------------------------------------- checkpoints
def _save(t: Trainer, name: str, state: TrainState, last: _LastCheckpoint | None = None) -> None:
    """Checkpoint ``name`` (rank 0); ``last`` notes it once it is whole on disk."""
    if last is not None:
        last.writing = (t.out / name, _at(state), _inode(t.out / name))
    if t.dist.is_main:
        ckpt.save_checkpoint(
            t.out / name,
            {
                "model": t.model.state_dict(),
                "optimizer": t.optimizer.state_dict(),
                "scaler": t.scaler.state_dict(),
                "ema": t.ema.state_dict() if t.ema is not None else None,
                "state": json.loads(json.dumps(state.to_dict())),  # plain types only: loadable with weights_only=True
                "rng": ckpt.capture_rng(),
                "config": t.cfg.to_dict(),
                "model_config": t.model_config.to_dict() if t.model_config is not None else None,
                "classes": list(t.data.classes),
            },
        )
    if last is not None:
        last.path, last.at, last.writing = t.out / name, _at(state), None


def _at(state: TrainState) -> str:
    """Where a checkpoint of ``state`` continues: ``epoch 2, step 3`` (mid-epoch) or ``the end of epoch 1``."""
    return (
        f"epoch {state.epoch + 1}, step {state.step_in_epoch}"
        if state.step_in_epoch
        else f"the end of epoch {state.epoch}"
    )


def _mid_epoch(t: Trainer, state: TrainState, last: _LastCheckpoint, step: int, k: int, stats: EpochStats) -> None:
    """Every ``run.checkpoint_every_steps`` optimizer steps inside an epoch: ``last.pt`` at that point."""
    every = t.cfg.run.checkpoint_every_steps
    if every and k % every == 0 and k < t.steps_per_epoch:
        _save(t, ckpt.LAST, dataclasses.replace(state, step=step, step_in_epoch=k, sums=stats), last)


def _export(t: Trainer, name: str) -> None:
    """The validated weights as a cvt-torch file that carries the architecture, class names and preprocessing."""
    if t.dist.is_main and t.model_config is not None:
        save_native(t.eval_model.state_dict(), t.model_config, t.out / name, t.spec)


def _restore(t: Trainer, last: _LastCheckpoint, write: bool = True) -> TrainState:
    """Load ``t.resume_from`` into the run's pieces (checking it fits the recipe and the data); ``write``: rewrite
    ``metrics.jsonl`` to what the checkpoint knows (the dry run writes nothing)."""
    path = t.resume_from
    ck = ckpt.load_checkpoint(path)
    if ck.get("classes") != list(t.data.classes):
        raise TrainError(f"{path}: the checkpoint's classes differ from the data's; use a new --out")
    saved = CvTConfig.from_dict(ck["model_config"]) if ck.get("model_config") else None
    if t.model_config is not None and saved is not None and saved != t.model_config:
        raise TrainError(f"{path}: the checkpoint holds a different model than the recipe; use a new --out")
    ignored = ("run.out", "run.progress", "recipe.")
    changed = [k for k in _diff(ck.get("config", {}), t.cfg.to_dict()) if not k.startswith(ignored)]
    if changed:
        t.echo(f"note: resuming with recipe changes: {', '.join(changed[:8])}")
    t.model.load_state_dict(ck["model"])
    t.optimizer.load_state_dict(ck["optimizer"])
    if ck.get("scaler"):
        t.scaler.load_state_dict(ck["scaler"])
    if t.ema is not None and ck.get("ema"):
        t.ema.load_state_dict(ck["ema"])
    state = TrainState.from_dict(ck["state"])
    last.path, last.at = path, _at(state)
    if not write:
        return state
    t.echo(f"resumed from {path} at {last.at} (global step {state.step})")
    if t.dist.is_main:  # the log may hold lines written after this checkpoint: rewrite it from the state
        _write_metrics(t, state.history)
    return state


# ---------------------------------------------------------------------------- one epoch's numbers
def _record(t: Trainer, state: TrainState, stats: EpochStats) -> dict[str, Any]:
    """The epoch's line in ``metrics.jsonl``: training numbers, and validation when it is due."""
    epoch, step = state.epoch + 1, state.step + t.steps_per_epoch - state.step_in_epoch
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": t.lr(step - 1),
        "train_loss": stats.loss / max(stats.images, 1),
        "train_top1": stats.correct / max(stats.images, 1),
        "train_images_per_s": stats.images / max(stats.seconds, 1e-9),
        "epoch_seconds": stats.seconds,
        "skipped_images": int(stats.skipped),  # distinct files this epoch
    }
    if stats.skipped_files:
        record["skipped_files"] = list(stats.skipped_files)[:5]
    if epoch % t.cfg.run.eval_every == 0 or epoch == t.cfg.schedule.epochs:
        distributed.broadcast_buffers(t.eval_model, t.dist)
        sum_over_processes = functools.partial(distributed.all_reduce_sum, info=t.dist)
        res = evaluate(
            t.eval_model,
            t.val_loader,
            len(t.data.classes),
            device=t.device,
            amp_dtype=t.amp_dtype,
            channels_last=t.cfg.run.channels_last,
            all_reduce=sum_over_processes,
        )
        record.update(val_loss=res["loss"], val_top1=res["top1"], val_top5=res["top5"], val_images=res["n"])
    return record


def _write_metrics(t: Trainer, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``, one line per epoch, rewritten whole (atomically: never a half line after a crash)."""
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(t.out / "metrics.jsonl", lambda tmp: tmp.write_text(lines))


def _log(t: Trainer, history: list[dict[str, Any]], tb: Any, stats: EpochStats, elapsed: float, done_here: int) -> None:
    """``metrics.jsonl``, TensorBoard and the progress line for the epoch ``history[-1]`` describes."""
    record = history[-1]
    if t.dist.is_main:
        _write_metrics(t, history)
        for k, v in record.items():
            if tb is not None and isinstance(v, (int, float)) and k != "epoch":
                tb.add_scalar(k, v, record["epoch"])
    epochs = t.cfg.schedule.epochs
    eta = elapsed / max(done_here, 1) * (epochs - record["epoch"])
    r = record
    val = f"  val loss {r['val_loss']:.4f} top-1 {100 * r['val_top1']:.2f}%" if "val_top1" in r else ""
    t.echo(
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} top-1 {100 * r['train_top1']:.1f}%{val}"
        f"  lr {r['lr']:.2e}  {r['train_images_per_s']:.0f} img/s  {r['epoch_seconds']:.1f}s  eta {_fmt_time(eta)}"
    )
    if stats.skipped_files:
        t.echo(f"  {_skipped(stats.skipped_files, ' this epoch')}")


# ---------------------------------------------------------------------------- start and end
def _announce(t: Trainer) -> None:
    cfg, info = t.cfg, t.dist
    n_params = sum(p.numel() for p in t.model.parameters())
    name = t.model_config.name if t.model_config else type(t.model).__name__
    micro = cfg.data.batch_size // (info.world_size * cfg.optim.accum_steps)
    amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}[t.amp_dtype]
    t.echo(
        f"cvt train: {name} ({n_params / 1e6:.2f}M parameters) on {cfg.data.kind}: {len(t.data.train)} training / "
        f"{len(t.data.val)} validation images, {len(t.data.classes)} classes"
    )
    t.echo(
        f"  {t.device} ({amp}), {info.world_size} process(es), global batch {cfg.data.batch_size} "
        f"({micro} x {info.world_size} process(es) x {cfg.optim.accum_steps} accumulation), "
        f"lr {cfg.scaled_lr():.2e} ({cfg.optim.name}), {cfg.schedule.epochs} epochs x {t.steps_per_epoch} steps; "
        f"out: {t.out}"
    )


def _finish(t: Trainer, state: TrainState) -> FitResult:
    cfg, out = t.cfg, t.out
    baseline: dict[str, float] = {}
    if t.dist.is_main and cfg.run.baseline and isinstance(t.data.train, DigitsImages):
        baseline["svc_rbf_top1"] = svc_baseline(t.data.train, t.data.val)  # the very images the CvT saw
    result = FitResult(
        out_dir=out,
        history=state.history,
        best_top1=state.best,
        best_epoch=state.best_epoch,
        best_weights=(out / "best.safetensors") if (out / "best.safetensors").is_file() else None,
        last_checkpoint=ckpt.find_last(out),
        train_seconds=state.train_seconds,
        skipped_images=state.skipped_total,
        baseline=baseline,
        skipped_files=list(state.skipped_files),
    )
    _export(t, "final.safetensors")  # the weights the run ended with
    if t.dist.is_main:
        name = t.model_config.name if t.model_config else type(t.model).__name__
        curve = None
        if cfg.run.plots:
            from .plots import learning_curve  # matplotlib: the `train` extra

            curve = learning_curve(state.history, out / "learning_curve.png", f"{name} on {cfg.data.kind}")
        summary = {
            "best_val_top1": result.best_top1,
            "best_epoch": result.best_epoch,
            "final": result.final,
            "baseline": baseline,
            "train_seconds": result.train_seconds,
            "skipped_images": result.skipped_images,
            "skipped_files": result.skipped_files[:20],
            "classes": list(t.data.classes),
            "model": name,
            "parameters": sum(p.numel() for p in t.model.parameters()),
            "processes": t.dist.world_size,
        }
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text))
        t.echo(_table(state.history, result, out, curve, state.skipped_files))
    distributed.barrier(t.dist)
    return result


def _skipped(files: dict[str, str], when: str = "") -> str:
    """``N unreadable file(s) skipped WHEN: a.png (its reason), b.png, c.png and 2 more``."""
    names = list(files)
    first = files[names[0]]
    reason = first[len(names[0]) + 2 :] if first.startswith(f"{names[0]}: ") else first
    shown = ", ".join([f"{names[0]} ({reason})", *names[1:3]])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{len(names)} unreadable file(s) skipped{when}: {shown}{more}"


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _fmt_time(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _table(
    history: list[dict[str, Any]], res: FitResult, out: Path, curve: Path | None, skipped_files: dict[str, str]
) -> str:
    rows = history if len(history) <= 12 else history[:3] + history[-8:]
    lines = [
        "",
        f"{'epoch':>5} {'train loss':>10} {'train top-1':>11} {'val loss':>9} {'val top-1':>9} "
        f"{'val top-5':>9} {'lr':>9} {'time':>7}",
    ]
    for i, h in enumerate(rows):
        if len(history) > 12 and i == 3:
            lines.append(f"{'...':>5}")
        v = (
            f"{h['val_loss']:>9.4f} {100 * h['val_top1']:>8.2f}% {100 * h['val_top5']:>8.2f}%"
            if "val_top1" in h
            else f"{'-':>9} {'-':>9} {'-':>9}"
        )
        lines.append(
            f"{h['epoch']:>5} {h['train_loss']:>10.4f} {100 * h['train_top1']:>10.2f}% {v} "
            f"{h['lr']:>9.2e} {h['epoch_seconds']:>6.1f}s"
        )
    if res.best_top1 is not None:
        final = res.final.get("val_top1")
        line = f"validation top-1: final {100 * final:.2f}%" if final is not None else "validation top-1:"
        line += f", best {100 * res.best_top1:.2f}% (epoch {res.best_epoch})"
        if "svc_rbf_top1" in res.baseline:
            line += f"   |   scikit-learn SVC (RBF) on the same split: {100 * res.baseline['svc_rbf_top1']:.2f}%"
        lines.append(line)
    skipped = f"; {_skipped(skipped_files)}" if skipped_files else ""
    lines.append(f"training time: {res.train_seconds:.1f} s over {len(history)} epochs{skipped}")
    files = [
        p.name
        for p in (res.best_weights, out / "final.safetensors", res.last_checkpoint, curve)
        if p is not None and p.exists()
    ]
    lines.append(f"outputs in {out}/: {', '.join([*files, 'metrics.jsonl', 'summary.json', 'config.yaml'])}")
    return "\n".join(lines)


__all__ = ["FitResult", "TrainError", "TrainInterrupted", "TrainingDiverged", "dry_run", "fit"]
