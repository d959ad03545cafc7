"""``cvt eval DATA``: top-1, top-5, loss, per-class accuracy and a confusion matrix, with the checkpoint's
own preprocessing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import torch

from ..core import bounds
from ..core.errors import CvtError, DataError, UsageError, WriteError, first_line, require
from ..core.files import check_writable, write_text
from ..core.presets import weight_source
from ..core.spec import EvalPreprocess
from ..core.text import dumps_json, escape_controls
from ..data.datasets import EvalSet, collate
from ..data.sources import EvalFiles, eval_source, read_eval_data
from ..data.transforms import build_eval_transform
from ..eval import EvalResult, check_finite, evaluate
from ..torch.factory import create_model
from ..torch.fusion import fuse
from ..torch.model import CvT
from ..torch.runtime import resolve_device
from ._signature import Arg


def run_eval(
    data: Annotated[str, Arg(metavar="DATA")],
    *,
    model: str | None = None,
    weights: Annotated[str | None, Arg(metavar="FILE|DIR")] = None,
    batch_size: Annotated[int, Arg(minimum=1)] = 64,
    workers: Annotated[int, Arg(minimum=0)] = 2,
    device: str | None = None,
    output: Annotated[str | None, Arg("-o", metavar="report.json")] = None,
    confusion: Annotated[str | None, Arg(metavar="PNG")] = None,
    as_json: Annotated[bool, Arg("--json")] = False,
) -> int:
    """DATA: a folder of class folders (ImageNet val by synset id n01440764/..., ImageNet-V2 by index 0..999, or
    your own class names), a data root holding val/, a CSV/JSON list of path,label, or 'digits' (the fixed held-out
    split of scikit-learn's digits that cvt train uses). Classes are matched by name: the model's own labels (any
    subset), class indices, or ImageNet synset ids; only a model without class names maps one folder per class in
    sorted order, and says so.

    Args:
        data: image folder, list file, or 'digits'
        model: checkpoint or architecture name (default: what --weights holds)
        weights: local weights (official .pth, HF dir, cvt-torch file)
        batch_size: images per forward pass
        workers: DataLoader decoding workers
        device: cpu, cuda or cuda:N (default: cuda when available)
        output: write the full report (JSON) here
        confusion: write a confusion-matrix picture here
        as_json: print the report as JSON instead of a summary
    """
    # NOTE every check that needs no model comes first: a bad argument, destination or DATA fails in seconds,
    # not after a download or a whole evaluation
    bounds.check_options(batch_size=(batch_size, bounds.BATCH_SIZE), workers=(workers, bounds.workers_limit()))
    dev = resolve_device(device)
    _check_model_name(model, weights)
    _check_destinations(output, confusion)
    found = read_eval_data(data)
    net = _load(model, weights, dev)
    pre = net.pretrained_cfg.preprocess
    source = eval_source(found, net.config.num_classes, net.pretrained_cfg.labels)
    if isinstance(source, EvalFiles) and source.mapping.note:
        print(f"cvt eval: note: {escape_controls(source.mapping.note)}", file=sys.stderr)
    if len(source) == 0:
        raise DataError(f"{data}: no images")
    loader = torch.utils.data.DataLoader(
        EvalSet(source, build_eval_transform(pre)),
        batch_size=batch_size,
        num_workers=workers if len(source) > 4 * batch_size else 0,
        collate_fn=collate,
    )
    res = evaluate(net, loader, net.config.num_classes, device=dev)
    check_finite(res, data)  # NaN or inf logits: one line, exit 1, never a percentage
    if res.n == 0:
        first = res.skipped_files[0] if res.skipped_files else "none"
        raise DataError(f"{data}: none of its {len(source)} images could be read (first: {first})")
    rule = source.mapping.rule if isinstance(source, EvalFiles) else "digits"
    report = _report(res, source.classes, data, net.config.name, weights, pre, rule)
    written = []
    if output:  # NOTE before the picture: a picture that fails must not lose the numbers
        write_text(output, dumps_json(report, indent=2) + "\n")
        written.append(output)
    failed = _draw_confusion(res, source.classes, report, confusion) if confusion else None
    if confusion and failed is None:
        written.append(confusion)
    if as_json:
        print(dumps_json(report, indent=2))
    else:
        _summary(report, pre, written)
    for msg in res.skipped_files[:5]:
        print(f"cvt eval: skipped {escape_controls(msg)}", file=sys.stderr)
    if failed is not None:  # the numbers are out (printed, and in --output); now the one line on the picture
        raise failed
    return 1 if res.skipped else 0


def _check_model_name(model: str | None, weights: str | None) -> None:
    """An unknown ``--model``, or an architecture without released weights and no ``--weights``: usage errors."""
    if not weight_source(model, weights).has_weights:  # an unknown name: UnknownModelError (exit 2) naming it
        what = f"--model {model} is an architecture without released weights: " if model else ""
        raise UsageError(f"{what}give --weights FILE, or --model with a released checkpoint name (see `cvt list`)")


def _check_destinations(output: str | None, confusion: str | None) -> None:
    """Refuse now the report and picture destinations that the writes at the end would fail on."""
    for path in (output, confusion):
        if path:
            check_writable(path)
    if output and confusion and check_writable(output).resolve() == check_writable(confusion).resolve():
        raise UsageError(f"--output and --confusion: both name {output}; the picture would replace the report")
    if confusion:  # NOTE matplotlib (the train extra) only when a picture is asked for; say so before evaluating
        require("matplotlib", "train", "--confusion")


def _load(model: str | None, weights: str | None, device: torch.device) -> CvT:
    """The model to evaluate, fused for inference (its ``pretrained_cfg`` gives preprocessing and labels)."""
    source = weight_source(model, weights)
    net = create_model(source.name, weights=source.weights, pretrained=source.pretrained, device=device)
    return fuse(net, cls_only=True, inplace=True)


def _report(
    res: EvalResult,
    classes: list[str],
    data: str,
    name: str,
    weights: str | None,
    pre: EvalPreprocess,
    class_mapping: str,
) -> dict[str, Any]:
    """What ``--output`` writes and ``--json`` prints: ``evaluate``'s numbers under the data's class names.

    ``class_mapping``: how the data's classes met the model's (``labels``, ``index``, ``synset``, ``sorted``,
    ``digits``; see :func:`cvt.core.classes.map_eval_classes`).
    """
    present = [i for i, acc in enumerate(res.per_class) if acc is not None]
    return {
        "data": str(data),
        "model": name,
        "weights": str(weights) if weights else None,
        "class_mapping": class_mapping,
        "preprocess": pre.to_dict(),
        "n": res.n,
        "top1": res.top1,
        "top5": res.top5,
        "loss": res.loss,
        "images_per_s": res.images_per_s,
        "per_class": {classes[i]: res.per_class[i] for i in present},
        "skipped": res.skipped,
        "skipped_files": res.skipped_files,
        "confusion": res.confusion if len(res.per_class) <= 100 else None,
    }


def _draw_confusion(res: EvalResult, classes: list[str], report: dict[str, Any], png: str) -> CvtError | None:
    """Draw the picture; return (not raise) its failure as one-line error, so the caller can print the numbers
    first. ``res.confusion``: K x K counts (rows: true class)."""
    from ..train.plots import confusion_matrix  # NOTE matplotlib (the train extra) only when a picture is asked for

    present = [i for i, acc in enumerate(res.per_class) if acc is not None]
    cm = res.confusion
    if len(cm) > len(present):  # only the classes the data has, so the picture stays readable
        cm = [[cm[i][j] for j in present] for i in present]
    title = f"{report['model']} on {Path(report['data']).name}: top-1 {100 * res.top1:.2f}%"
    try:
        confusion_matrix(cm, [classes[i] for i in present], png, title=title)
    except CvtError as e:  # a write error: already one line naming the file
        return e
    except Exception as e:  # matplotlib's own failures (a font, a backend, a huge figure): one line as well
        failed = WriteError(f"{png}: cannot draw the confusion matrix ({type(e).__name__}: {first_line(e)})")
        failed.__cause__ = e  # --debug shows where it came from
        return failed
    return None


def _summary(report: dict[str, Any], pre: EvalPreprocess, written: list[str]) -> None:
    """The report as a few lines of text; every name and path has its control characters escaped."""
    r = {k: (escape_controls(v) if isinstance(v, str) else v) for k, v in report.items()}
    r["per_class"] = {escape_controls(k): v for k, v in report["per_class"].items()}
    written = [escape_controls(w) for w in written]
    print(
        f"{r['model']} on {r['data']}: {r['n']} images, preprocessing {pre.img_size}px crop_pct {pre.crop_pct} "
        f"{pre.interpolation}"
    )
    print(
        f"  top-1 {100 * r['top1']:.2f}%   top-5 {100 * r['top5']:.2f}%   loss {r['loss']:.4f}   "
        f"{r['images_per_s']:.0f} images/s"
    )
    per = sorted(r["per_class"].items(), key=lambda kv: kv[1])
    if len(per) <= 20:
        print("  per class: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["per_class"].items()))
    else:
        print("  lowest classes: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in per[:5]))
    if r["skipped"]:
        print(f"  {r['skipped']} unreadable image(s) skipped")
    if written:
        print("  wrote " + ", ".join(written))
