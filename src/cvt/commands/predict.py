"""``cvt predict PATH...``: top-k classes for image files, directories (recursive) and glob patterns.

One record per image (path, labels, class indices, probabilities) as a table, JSON or CSV. A bad input gets
one line on stderr naming it and the reason; the others are still answered; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import UsageError, UserError, user_errors

FORMATS = ("table", "json", "csv")


def register(sub: argparse._SubParsersAction) -> None:
    from ..core.images import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "predict",
        help="classify images (top-k ImageNet or custom labels)",
        description="Classify images with a CvT. Without --weights the released checkpoint --model is "
        "downloaded once into the Hugging Face cache. Preprocessing is the checkpoint's official one.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (recursive) or quoted globs")
    p.add_argument("--model", help="checkpoint or architecture name (default: cvt-13, or what --weights holds)")
    p.add_argument("--weights", metavar="FILE|DIR", help="local weights: official .pth, HF dir, cvt-torch file")
    p.add_argument("--labels", metavar="FILE", help="class names: one per line, or JSON (list or id2label)")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader decoding workers (default: 0 for few files)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--output", "-o", default=None, metavar="FILE", help="write the records here instead of stdout")
    p.add_argument("--explain", default=None, metavar="DIR", help="write a PNG per image: top-k and cls attention map")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default 100M)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_predict)


# ---------------------------------------------------------------------------- inputs
def _walk(root: str, problems: list[tuple[str, str]]) -> list[str]:
    from ..core.images import list_images

    def onerror(e: OSError) -> None:
        problems.append((str(e.filename), f"{e.filename}: cannot list directory ({e.strerror})"))

    found = list_images(root, onerror)
    if not found:
        problems.append((root, f"{root}: no image files found (by extension) in this directory"))
    return found


def expand_inputs(args: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files (taken as given), directories (walked, image extensions only, hidden entries skipped) and globs
    -> ``(files in order, without duplicates; [(input, "input: problem")])``."""
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for arg in args:
        if os.path.isdir(arg):
            files += _walk(arg, problems)
        elif os.path.lexists(arg):
            files.append(arg)  # even a broken link or an odd name: load_image says what is wrong
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                problems.append((arg, f"{arg}: no file matches this pattern"))
            for m in matches:
                files += _walk(m, problems) if os.path.isdir(m) else [m]
        else:
            problems.append((arg, f"{arg}: no such file or directory"))
    seen: set[str] = set()
    unique = [f for f in files if not (os.path.normpath(f) in seen or seen.add(os.path.normpath(f)))]
    return unique, problems


# ---------------------------------------------------------------------------- outputs
def format_records(records: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "csv":
        k = max((len(r["indices"]) for r in records), default=0)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "index", "prob")]
        w.writerow(head + (["explain"] if any("explain" in r for r in records) else []))
        for r in records:
            row = [r["path"]]
            for lab, idx, pr in zip(r["labels"], r["indices"], r["probs"]):
                row += [lab, idx, f"{pr:.6f}"]
            row += [""] * (len(head) - len(row))
            w.writerow(row + ([r["explain"]] if "explain" in r else []))
        return buf.getvalue()
    lines = []
    for r in records:
        lines.append(r["path"] + (f"   (explain: {r['explain']})" if "explain" in r else ""))
        for lab, idx, pr in zip(r["labels"], r["indices"], r["probs"]):
            lines.append(f"  {100 * pr:6.2f}%  {idx:>5}  {lab}")
    return "\n".join(lines) + ("\n" if lines else "")


def _unique_png(directory: Path, path: str, used: set[str]) -> Path:
    stem = Path(path).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        name, n = f"{stem}-{n}.png", n + 1
    used.add(name)
    return directory / name


# ---------------------------------------------------------------------------- the verb
def _say(msg: str) -> None:
    print(f"cvt predict: error: {' '.join(msg.split())}", file=sys.stderr)


def _check_args(args: argparse.Namespace) -> None:
    import torch

    for name in ("topk", "batch_size", "max_pixels"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here (use --device cpu)")


def run_predict(args: argparse.Namespace) -> int:
    from ..core.labels import LabelError
    from ..predict import Predictor, PredictorError

    _check_args(args)
    files, problems = expand_inputs(args.paths)
    for _, msg in problems:
        _say(msg)
    if not files:
        raise UserError("no images to classify")
    workers = args.workers
    if workers is None:
        workers = 0 if len(files) <= args.batch_size else min(4, max(1, (os.cpu_count() or 2) - 1))
    with user_errors():
        try:
            predictor = Predictor(
                args.model, weights=args.weights, labels=args.labels, topk=args.topk, device=args.device,
                batch_size=args.batch_size, num_workers=workers, max_pixels=args.max_pixels,
            )  # fmt: skip
        except LabelError as e:
            raise UserError(str(e)) from None
        except PredictorError as e:
            raise UsageError(str(e)) from None
    explain_dir = Path(args.explain) if args.explain else None
    if explain_dir is not None:
        try:
            explain_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{explain_dir}: cannot create directory ({e.strerror})") from None
    progress = not args.no_progress and len(files) > args.batch_size and sys.stderr.isatty()
    records: list[dict[str, Any]] = []
    failures = len(problems)
    used: set[str] = set()
    for batch in predictor.iter_files(files, explain=explain_dir is not None, progress=progress):
        for _, msg in batch.failures:
            _say(msg)
        failures += len(batch.failures)
        for j, pred in enumerate(batch.predictions):
            rec = pred.to_dict()
            if explain_dir is not None and batch.inputs is not None and batch.heatmaps is not None:
                rec["explain"] = str(_write_explain(predictor, batch, j, pred, explain_dir, used))
            records.append(rec)
    text = format_records(records, args.format)
    if args.output:
        from ..weights.io import atomic_write

        try:
            atomic_write(args.output, lambda tmp: tmp.write_text(text))
        except OSError as e:
            raise UserError(f"{args.output}: cannot write ({e.strerror or e})") from None
    else:
        sys.stdout.write(text)
    if failures:
        print(f"cvt predict: {failures} input(s) failed, {len(records)} classified", file=sys.stderr)
    return 1 if failures else 0


def _write_explain(predictor: Any, batch: Any, j: int, pred: Any, directory: Path, used: set[str]) -> Path:
    from ..data.transforms import denormalize
    from ..explain import render

    pre = predictor.preprocess
    image = denormalize(batch.inputs[j], pre.mean, pre.std)
    png = _unique_png(directory, pred.path, used)
    render(image, batch.heatmaps[j], pred.labels, pred.probs, title=pred.path).save(png)
    return png
