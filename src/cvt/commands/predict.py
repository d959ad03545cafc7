"""``cvt predict PATH...``: top-k classes for image files, directories (recursive) and glob patterns.

One record per image (path, labels, class indices, probabilities) as a table, JSON or CSV. A bad input gets
one line on stderr naming it and the reason; the others are still answered; the exit status is then 1.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from ..core import bounds
from ..core.errors import CvtError, WriteError
from ..core.files import atomic_write, check_writable, write_text
from ..core.images import list_images
from ..core.text import dumps_json, escape_controls
from ..data.transforms import denormalize
from ..explain import render
from ..predict import BatchResult, Prediction, Predictor
from ._signature import Arg, default_of


def run_predict(
    paths: Annotated[list[str], Arg(metavar="PATH")],
    *,
    model: str | None = None,
    weights: Annotated[str | None, Arg(metavar="FILE|DIR")] = None,
    labels: Annotated[str | None, Arg(metavar="FILE")] = None,
    topk: Annotated[int, Arg(minimum=1)] = default_of(Predictor, "topk"),
    batch_size: Annotated[int, Arg(minimum=1)] = default_of(Predictor, "batch_size"),
    workers: Annotated[int | None, Arg(minimum=0)] = None,
    device: str | None = None,
    format: Literal["table", "json", "csv"] = "table",
    output: Annotated[str | None, Arg("-o", metavar="FILE")] = None,
    explain: Annotated[str | None, Arg(metavar="DIR")] = None,
    max_pixels: Annotated[int, Arg(minimum=1)] = default_of(Predictor, "max_pixels"),
    progress: bool = True,
) -> int:
    """Classify images with a CvT. Without --weights the released checkpoint --model is downloaded once into the
    Hugging Face cache. Preprocessing is the checkpoint's official one (for an .onnx file: the one its metadata
    holds; a file exported elsewhere, without it, is refused in one line).

    Args:
        paths: image files, directories (recursive) or quoted globs
        model: checkpoint or architecture name (default: cvt-13, or what --weights holds)
        weights: local weights: official .pth, HF dir, cvt-torch file, or an ONNX file from `cvt export` (run by
            onnxruntime with the preprocessing and class names stored in it)
        labels: class names: one per line, or JSON (list or id2label)
        topk: classes per image
        batch_size: images per forward pass
        workers: DataLoader decoding workers (default: 0 for few files)
        device: cpu, cuda or cuda:N (default: cuda when available)
        format: output format
        output: write the records here instead of stdout
        explain: write a PNG per image: top-k and cls attention map
        max_pixels: refuse larger images
        progress: progress bar on stderr
    """
    # sizes first (cvt.core.bounds): before a file is walked, a model built or a worker spawned
    bounds.check_options(batch_size=(batch_size, bounds.BATCH_SIZE), workers=(workers, bounds.workers_limit()))
    if output:  # before the model is loaded and the images classified, not after
        check_writable(output)
    if explain and os.path.exists(explain) and not os.path.isdir(explain):
        raise WriteError(f"{explain}: --explain needs a directory, and this is a file")
    files, problems = expand_inputs(paths)
    for _, msg in problems:
        _say(msg)
    if not files:
        if problems:  # each input's line was the error; nothing else to say
            return 1
        raise CvtError("no images to classify")
    if workers is None:
        workers = 0 if len(files) <= batch_size else min(4, max(1, (os.cpu_count() or 2) - 1))
    predictor = Predictor(
        model,
        weights=weights,
        labels=labels,
        topk=topk,
        device=device,
        batch_size=batch_size,
        num_workers=workers,
        max_pixels=max_pixels,
        explain=bool(explain),
    )
    bar = progress and len(files) > batch_size and sys.stderr.isatty()
    records, failed = _classify(predictor, files, Path(explain) if explain else None, bar)
    failures = len(problems) + failed
    text = format_records(records, format)
    if output:
        write_text(output, text)
    else:
        sys.stdout.write(text)
    if failures:
        print(f"cvt predict: {failures} input(s) failed, {len(records)} classified", file=sys.stderr)
    return 1 if failures else 0


def _classify(
    predictor: Predictor, files: list[str], explain_dir: Path | None, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    """``(one record per classified file, in input order; how many failed)``; failures are said on stderr."""
    if explain_dir is not None:
        explain_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    failed = 0
    used: set[str] = set()
    for batch in predictor.iter_files(files, explain=explain_dir is not None, progress=progress):
        for _, msg in batch.failures:
            _say(msg)
        failed += len(batch.failures)
        for j, pred in enumerate(batch.predictions):
            rec = pred.to_dict()
            if explain_dir is not None:
                png = _unique_png(explain_dir, pred.path, used)
                rec["explain"] = str(_write_explain(predictor, batch, j, pred, png))
            records.append(rec)
    return records, failed


# ---------------------------------------------------------------------------- inputs
def _walk(root: str, problems: list[tuple[str, str]]) -> list[str]:
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
    """Records as text: ``json`` (valid UTF-8 whatever the names), ``csv`` or a ``table``; names and paths in a table
    or CSV have their control characters escaped (:mod:`cvt.core.text`): a label cannot drive the terminal."""
    if fmt == "json":
        return dumps_json(records, indent=2) + "\n"
    if fmt == "csv":
        k = max((len(r["indices"]) for r in records), default=0)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "index", "prob")]
        w.writerow(head + (["explain"] if any("explain" in r for r in records) else []))
        for r in records:
            row = [escape_controls(r["path"])]
            for lab, idx, pr in zip(r["labels"], r["indices"], r["probs"]):
                row += [escape_controls(lab), idx, f"{pr:.6f}"]
            row += [""] * (len(head) - len(row))
            w.writerow(row + ([escape_controls(r["explain"])] if "explain" in r else []))
        return buf.getvalue()
    lines = []
    for r in records:
        shown = escape_controls(r["path"])
        lines.append(shown + (f"   (explain: {escape_controls(r['explain'])})" if "explain" in r else ""))
        for lab, idx, pr in zip(r["labels"], r["indices"], r["probs"]):
            lines.append(f"  {100 * pr:6.2f}%  {idx:>5}  {escape_controls(lab)}")
    return "\n".join(lines) + ("\n" if lines else "")


# Our overlays carry this PNG text chunk: an existing file without it is the user's, and is never replaced.
EXPLAIN_MARK = ("Software", "cvt predict --explain")


def _ours(png: Path) -> bool:
    """True when ``png`` is an overlay an earlier ``--explain`` wrote (its text chunk), so it may be replaced."""
    from PIL import Image

    try:
        with Image.open(png) as im:
            return getattr(im, "text", {}).get(EXPLAIN_MARK[0]) == EXPLAIN_MARK[1]
    except (OSError, ValueError, SyntaxError):
        return False


def _unique_png(directory: Path, path: str | None, used: set[str]) -> Path:
    """``directory/<stem>.png``, or ``<stem>-<n>.png`` when that name is taken in this run or by a file we did not
    write (a user's photo in the same folder is written beside, never over)."""
    stem = Path(path or "").stem or "image"
    name, n = f"{stem}.png", 1
    while name in used or (os.path.lexists(directory / name) and not _ours(directory / name)):
        name, n = f"{stem}-{n}.png", n + 1
    used.add(name)
    return directory / name


def _say(msg: str) -> None:
    print(f"cvt predict: error: {escape_controls(' '.join(msg.split()))}", file=sys.stderr)


def _write_explain(predictor: Predictor, batch: BatchResult, j: int, pred: Prediction, png: Path) -> Path:
    """The ``j``-th image of ``batch``: its input crop, its cls attention map and its top-k, as a PNG."""
    assert batch.inputs is not None and batch.heatmaps is not None  # iter_files(explain=True) gives both
    pre = predictor.preprocess
    image = denormalize(batch.inputs[j], pre.mean, pre.std)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(*EXPLAIN_MARK)
    panel = render(image, batch.heatmaps[j], pred.labels, pred.probs, title=pred.path)
    atomic_write(png, lambda tmp: panel.save(tmp, format="PNG", pnginfo=info))
    return png
