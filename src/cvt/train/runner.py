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
from ..core.files import RUN_HEADER, atomic_write
from ..data.sources import DigitsImages
from ..eval import evaluate
from ..torch.weights import save_native
from . import distributed
from .baseline import svc_baseline
from .checkpoint import BEST, LAST, capture_rng, find_last, load_checkpoint, save_checkpoint
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
        trainer = setup(cfg, out=cfg.run.out, resume=resume, overwrite=overwrite, model=model, echo=echo)
        last = _LastCheckpoint()
        try:
            return _train(trainer, cfg, notes, resume, last)
        except KeyboardInterrupt:
            raise TrainInterrupted(_interrupted(trainer, last, config, overrides)) from None


def _train(trainer: Trainer, cfg: TrainConfig, notes: list[str], resume: bool, last: _LastCheckpoint) -> FitResult:
    for note in notes:
        trainer.echo(note)
    with _process_settings(trainer):
        state = _restore(trainer, last) if trainer.resume_from is not None else TrainState()
        if resume and trainer.resume_from is None:
            trainer.echo(f"no checkpoint in {trainer.out}: starting a fresh run")
        if trainer.dist.is_main:
            text = f"{RUN_HEADER}; run it again with: cvt train --config THIS_FILE\n"  # RUN_DIR's mark
            atomic_write(trainer.out / "config.yaml", lambda tmp: tmp.write_text(text + cfg.to_yaml()))
        _announce(trainer)
        with _tensorboard(trainer) as writer, _name_last_good_checkpoint(trainer):
            started, first = time.perf_counter(), state.epoch
            for epoch in range(state.epoch, cfg.schedule.epochs):
                trainer.sampler.set_epoch(epoch, state.step_in_epoch)
                on_step = functools.partial(_mid_epoch, trainer, state, last)
                stats = train_one_epoch(trainer, state, trainer.train_loader, on_step=on_step)
                record = _record(trainer, state, stats)
                state = state.end_epoch(record, stats)
                _save(trainer, LAST, state, last)
                if state.best_epoch == epoch + 1:
                    _save(trainer, BEST, state)
                    _export(trainer, "best.safetensors")
                _log(trainer, state.history, writer, stats, time.perf_counter() - started, epoch + 1 - first)
        return _finish(trainer, state)


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
        trainer = setup(cfg, out=cfg.run.out, resume=resume, overwrite=overwrite, echo=notes.append, dry_run=True)
        if trainer.resume_from is not None:
            _restore(trainer, _LastCheckpoint(), write=False)  # a checkpoint for another model or data fails here too
    name = trainer.model_config.name if trainer.model_config is not None else "model"
    data = trainer.data
    ok = f"# ok: {name}, {len(data.train)} training / {len(data.val)} validation images, {len(data.classes)} classes"
    return "\n".join([cfg.to_yaml().rstrip("\n"), *(f"# {n}" for n in [*notes, _out_note(trainer)]), ok])


def _out_note(trainer: Trainer) -> str:
    """What a real start would do with the run directory."""
    if trainer.resume_from is not None:
        return f"out: {trainer.out}: would resume from {trainer.resume_from}"
    held = check_out(trainer.out, overwrite=True)  # setup let them pass: --overwrite, or --resume without a checkpoint
    if held:
        return f"out: {trainer.out}: would remove the earlier run's files ({', '.join(held)})"
    return f"out: {trainer.out}: a new run"


def _interrupted(trainer: Trainer, last: _LastCheckpoint, config: Recipe, overrides: Sequence[str]) -> str:
    """The one line for Ctrl-C: where the run can continue from, and the exact command that continues it."""
    words = ["cvt", "train"]
    if config is None or isinstance(config, (str, os.PathLike)):
        words += ["--config", os.fspath(config)] if config is not None else []
        words += [w for o in overrides for w in ("--set", o)]
    else:  # a recipe given as Python objects: the resolved copy the run wrote
        words += ["--config", str(trainer.out / "config.yaml")]
    command = shlex.join([*words, "--out", str(trainer.out), "--resume"])
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
def _process_settings(trainer: Trainer) -> Iterator[None]:
    """``run.threads`` and cuDNN autotuning for the run; those and the torch generators restored afterwards."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
            if trainer.cfg.run.threads:
                torch.set_num_threads(trainer.cfg.run.threads)
            torch.backends.cudnn.benchmark = trainer.device.type == "cuda" or benchmark
            yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def _tensorboard(trainer: Trainer) -> Iterator[Any]:
    """A TensorBoard writer on rank 0 with ``run.tensorboard`` (else None), closed at the end."""
    wanted = trainer.cfg.run.tensorboard and trainer.dist.is_main
    writer = tensorboard_writer()(str(trainer.out / "tensorboard")) if wanted else None
    try:
        yield writer
    finally:
        if writer is not None:
            writer.close()


@contextlib.contextmanager
def _name_last_good_checkpoint(trainer: Trainer) -> Iterator[None]:
    """A diverged run's message says where its last good checkpoint is and what to try."""
    try:
        yield
    except TrainingDiverged as e:
        good = find_last(trainer.out)
        where = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{e}; {where}. Try a lower optim.lr, optim.clip_grad, or run.amp: off / bf16") from None


# ---------------------------------------------------------------------------- checkpoints
def _save(trainer: Trainer, name: str, state: TrainState, last: _LastCheckpoint | None = None) -> None:
    """Checkpoint ``name`` (rank 0); ``last`` notes it once it is whole on disk."""
    if last is not None:
        last.writing = (trainer.out / name, _at(state), _inode(trainer.out / name))
    if trainer.dist.is_main:
        save_checkpoint(
            trainer.out / name,
            {
                "model": trainer.model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scaler": trainer.scaler.state_dict(),
                "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
                "state": json.loads(json.dumps(state.to_dict())),  # plain types only: loadable with weights_only=True
                "rng": capture_rng(),
                "config": trainer.cfg.to_dict(),
                "model_config": trainer.model_config.to_dict() if trainer.model_config is not None else None,
                "classes": list(trainer.data.classes),
            },
        )
    if last is not None:
        last.path, last.at, last.writing = trainer.out / name, _at(state), None


def _at(state: TrainState) -> str:
    """Where a checkpoint of ``state`` continues: ``epoch 2, step 3`` (mid-epoch) or ``the end of epoch 1``."""
    return (
        f"epoch {state.epoch + 1}, step {state.step_in_epoch}"
        if state.step_in_epoch
        else f"the end of epoch {state.epoch}"
    )


def _mid_epoch(
    trainer: Trainer, state: TrainState, last: _LastCheckpoint, step: int, step_in_epoch: int, stats: EpochStats
) -> None:
    """Every ``run.checkpoint_every_steps`` optimizer steps inside an epoch: ``last.pt`` at that point."""
    every = trainer.cfg.run.checkpoint_every_steps
    if every and step_in_epoch % every == 0 and step_in_epoch < trainer.steps_per_epoch:
        now = dataclasses.replace(state, step=step, step_in_epoch=step_in_epoch, sums=stats)
        _save(trainer, LAST, now, last)


def _export(trainer: Trainer, name: str) -> None:
    """The validated weights as a cvt-torch file that carries the architecture, class names and preprocessing."""
    if trainer.dist.is_main and trainer.model_config is not None:
        save_native(trainer.eval_model.state_dict(), trainer.model_config, trainer.out / name, trainer.spec)


def _restore(trainer: Trainer, last: _LastCheckpoint, write: bool = True) -> TrainState:
    """Load ``trainer.resume_from`` into the run's pieces (checking it fits the recipe and the data); ``write``: rewrite
    ``metrics.jsonl`` to what the checkpoint knows (the dry run writes nothing)."""
    path = trainer.resume_from
    saved = load_checkpoint(path)
    if saved.get("classes") != list(trainer.data.classes):
        raise TrainError(f"{path}: the checkpoint's classes differ from the data's; use a new --out")
    saved_config = CvTConfig.from_dict(saved["model_config"]) if saved.get("model_config") else None
    if trainer.model_config is not None and saved_config is not None and saved_config != trainer.model_config:
        raise TrainError(f"{path}: the checkpoint holds a different model than the recipe; use a new --out")
    ignored = ("run.out", "run.progress", "recipe.")
    changed = [key for key in _diff(saved.get("config", {}), trainer.cfg.to_dict()) if not key.startswith(ignored)]
    if changed:
        trainer.echo(f"note: resuming with recipe changes: {', '.join(changed[:8])}")
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):
        trainer.scaler.load_state_dict(saved["scaler"])
    if trainer.ema is not None and saved.get("ema"):
        trainer.ema.load_state_dict(saved["ema"])
    state = TrainState.from_dict(saved["state"])
    last.path, last.at = path, _at(state)
    if not write:
        return state
    trainer.echo(f"resumed from {path} at {last.at} (global step {state.step})")
    if trainer.dist.is_main:  # the log may hold lines written after this checkpoint: rewrite it from the state
        _write_metrics(trainer, state.history)
    return state


# ---------------------------------------------------------------------------- one epoch's numbers
def _record(trainer: Trainer, state: TrainState, stats: EpochStats) -> dict[str, Any]:
    """The epoch's line in ``metrics.jsonl``: training numbers, and validation when it is due."""
    epoch, step = state.epoch + 1, state.step + trainer.steps_per_epoch - state.step_in_epoch
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": trainer.lr(step - 1),
        "train_loss": stats.loss / max(stats.images, 1),
        "train_top1": stats.correct / max(stats.images, 1),
        "train_images_per_s": stats.images / max(stats.seconds, 1e-9),
        "epoch_seconds": stats.seconds,
        "skipped_images": int(stats.skipped),  # distinct files this epoch
    }
    if stats.skipped_files:
        record["skipped_files"] = list(stats.skipped_files)[:5]
    if epoch % trainer.cfg.run.eval_every == 0 or epoch == trainer.cfg.schedule.epochs:
        distributed.broadcast_buffers(trainer.eval_model, trainer.dist)
        sum_over_processes = functools.partial(distributed.all_reduce_sum, info=trainer.dist)
        validation = evaluate(
            trainer.eval_model,
            trainer.val_loader,
            len(trainer.data.classes),
            device=trainer.device,
            amp_dtype=trainer.amp_dtype,
            channels_last=trainer.cfg.run.channels_last,
            all_reduce=sum_over_processes,
        )
        record.update(
            val_loss=validation.loss, val_top1=validation.top1, val_top5=validation.top5, val_images=validation.n
        )
    return record


def _write_metrics(trainer: Trainer, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``, one line per epoch, rewritten whole (atomically: never a half line after a crash)."""
    lines = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(trainer.out / "metrics.jsonl", lambda tmp: tmp.write_text(lines))


def _log(
    trainer: Trainer, history: list[dict[str, Any]], writer: Any, stats: EpochStats, elapsed: float, done_here: int
) -> None:
    """``metrics.jsonl``, TensorBoard (``writer``, or None) and the progress line for the epoch ``history[-1]``."""
    record = history[-1]
    if trainer.dist.is_main:
        _write_metrics(trainer, history)
        for key, value in record.items():
            if writer is not None and isinstance(value, (int, float)) and key != "epoch":
                writer.add_scalar(key, value, record["epoch"])
    epochs = trainer.cfg.schedule.epochs
    eta = elapsed / max(done_here, 1) * (epochs - record["epoch"])
    val = f"  val loss {record['val_loss']:.4f} top-1 {100 * record['val_top1']:.2f}%" if "val_top1" in record else ""
    trainer.echo(
        f"epoch {record['epoch']:>3}/{epochs}  train loss {record['train_loss']:.4f} "
        f"top-1 {100 * record['train_top1']:.1f}%{val}  lr {record['lr']:.2e}  "
        f"{record['train_images_per_s']:.0f} img/s  {record['epoch_seconds']:.1f}s  eta {_fmt_time(eta)}"
    )
    if stats.skipped_files:
        trainer.echo(f"  {_skipped(stats.skipped_files, ' this epoch')}")


# ---------------------------------------------------------------------------- start and end
def _announce(trainer: Trainer) -> None:
    cfg, info = trainer.cfg, trainer.dist
    n_params = sum(p.numel() for p in trainer.model.parameters())
    name = trainer.model_config.name if trainer.model_config else type(trainer.model).__name__
    micro = cfg.data.batch_size // (info.world_size * cfg.optim.accum_steps)
    amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}[trainer.amp_dtype]
    data = trainer.data
    trainer.echo(
        f"cvt train: {name} ({n_params / 1e6:.2f}M parameters) on {cfg.data.kind}: {len(data.train)} training / "
        f"{len(data.val)} validation images, {len(data.classes)} classes"
    )
    trainer.echo(
        f"  {trainer.device} ({amp}), {info.world_size} process(es), global batch {cfg.data.batch_size} "
        f"({micro} x {info.world_size} process(es) x {cfg.optim.accum_steps} accumulation), "
        f"lr {cfg.scaled_lr():.2e} ({cfg.optim.name}), {cfg.schedule.epochs} epochs x {trainer.steps_per_epoch} steps; "
        f"out: {trainer.out}"
    )


def _finish(trainer: Trainer, state: TrainState) -> FitResult:
    cfg, out = trainer.cfg, trainer.out
    baseline: dict[str, float] = {}
    if trainer.dist.is_main and cfg.run.baseline and isinstance(trainer.data.train, DigitsImages):
        baseline["svc_rbf_top1"] = svc_baseline(trainer.data.train, trainer.data.val)  # the very images the CvT saw
    result = FitResult(
        out_dir=out,
        history=state.history,
        best_top1=state.best,
        best_epoch=state.best_epoch,
        best_weights=(out / "best.safetensors") if (out / "best.safetensors").is_file() else None,
        last_checkpoint=find_last(out),
        train_seconds=state.train_seconds,
        skipped_images=state.skipped_total,
        baseline=baseline,
        skipped_files=list(state.skipped_files),
    )
    _export(trainer, "final.safetensors")  # the weights the run ended with
    if trainer.dist.is_main:
        name = trainer.model_config.name if trainer.model_config else type(trainer.model).__name__
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
            "classes": list(trainer.data.classes),
            "model": name,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "processes": trainer.dist.world_size,
        }
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text))
        trainer.echo(_table(state.history, result, out, curve, state.skipped_files))
    distributed.barrier(trainer.dist)
    return result


def _skipped(files: dict[str, str], when: str = "") -> str:
    """``N unreadable file(s) skipped WHEN: a.png (its reason), b.png, c.png and 2 more``."""
    names = list(files)
    first = files[names[0]]
    reason = first[len(names[0]) + 2 :] if first.startswith(f"{names[0]}: ") else first
    shown = ", ".join([f"{names[0]} ({reason})", *names[1:3]])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{len(names)} unreadable file(s) skipped{when}: {shown}{more}"


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [changed for key in keys for changed in _diff(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _fmt_time(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _table(
    history: list[dict[str, Any]], result: FitResult, out: Path, curve: Path | None, skipped_files: dict[str, str]
) -> str:
    rows = history if len(history) <= 12 else history[:3] + history[-8:]
    lines = [
        "",
        f"{'epoch':>5} {'train loss':>10} {'train top-1':>11} {'val loss':>9} {'val top-1':>9} "
        f"{'val top-5':>9} {'lr':>9} {'time':>7}",
    ]
    for row, record in enumerate(rows):
        if len(history) > 12 and row == 3:
            lines.append(f"{'...':>5}")
        val = (
            f"{record['val_loss']:>9.4f} {100 * record['val_top1']:>8.2f}% {100 * record['val_top5']:>8.2f}%"
            if "val_top1" in record
            else f"{'-':>9} {'-':>9} {'-':>9}"
        )
        lines.append(
            f"{record['epoch']:>5} {record['train_loss']:>10.4f} {100 * record['train_top1']:>10.2f}% {val} "
            f"{record['lr']:>9.2e} {record['epoch_seconds']:>6.1f}s"
        )
    if result.best_top1 is not None:
        final = result.final.get("val_top1")
        line = f"validation top-1: final {100 * final:.2f}%" if final is not None else "validation top-1:"
        line += f", best {100 * result.best_top1:.2f}% (epoch {result.best_epoch})"
        if "svc_rbf_top1" in result.baseline:
            line += f"   |   scikit-learn SVC (RBF) on the same split: {100 * result.baseline['svc_rbf_top1']:.2f}%"
        lines.append(line)
    skipped = f"; {_skipped(skipped_files)}" if skipped_files else ""
    lines.append(f"training time: {result.train_seconds:.1f} s over {len(history)} epochs{skipped}")
    files = [
        p.name
        for p in (result.best_weights, out / "final.safetensors", result.last_checkpoint, curve)
        if p is not None and p.exists()
    ]
    lines.append(f"outputs in {out}/: {', '.join([*files, 'metrics.jsonl', 'summary.json', 'config.yaml'])}")
    return "\n".join(lines)


__all__ = ["FitResult", "TrainError", "TrainInterrupted", "TrainingDiverged", "dry_run", "fit"]
