"""``cvt eval DATA``: top-1, top-5, loss, per-class accuracy and a confusion matrix, with the checkpoint's
own preprocessing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import UsageError, UserError, user_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of a model on a labelled image folder, list file or the digits held-out split",
        description="DATA: a folder of class folders (ImageNet val by synset id n01440764/..., ImageNet-V2 "
        "by index 0..999, or your own class names), a data root holding val/, a CSV/JSON list of path,label, "
        "or 'digits' (the fixed held-out split of scikit-learn's digits that cvt train uses).",
    )
    p.add_argument("data", metavar="DATA", help="image folder, list file, or 'digits'")
    p.add_argument("--model", help="checkpoint or architecture name (default: what --weights holds)")
    p.add_argument("--weights", metavar="FILE|DIR", help="local weights (official .pth, HF dir, cvt-torch file)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--output", "-o", metavar="report.json", help="write the full report (JSON) here")
    p.add_argument("--confusion", metavar="PNG", help="write a confusion-matrix picture here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a summary")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from ..core.presets import get_checkpoint
    from ..data.datasets import DataError, EvalSet, collate, eval_source
    from ..data.transforms import build_eval_transform
    from ..eval import evaluate
    from ..factory import create_model

    if args.batch_size < 1 or args.workers < 0:
        raise UsageError("--batch-size must be >= 1 and --workers >= 0")
    if args.weights is None and (args.model is None or get_checkpoint(args.model) is None):
        raise UsageError("give --weights FILE, or --model with a released checkpoint name (see `cvt list`)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with user_errors():
        if args.weights is not None:
            model = create_model(args.model, weights=args.weights, device=device)
        else:
            model = create_model(args.model, pretrained=True, device=device)
        model.eval()
        cfg = model.config
        pre = model.pretrained_cfg.preprocess
        labels = model.pretrained_cfg.labels if isinstance(model.pretrained_cfg.labels, tuple) else None
        try:
            source = eval_source(args.data, cfg.num_classes, labels)
        except DataError as e:
            raise UserError(str(e)) from None
        if len(source) == 0:
            raise UserError(f"{args.data}: no images")
        loader = torch.utils.data.DataLoader(
            EvalSet(source, build_eval_transform(pre)), batch_size=args.batch_size,
            num_workers=args.workers if len(source) > 4 * args.batch_size else 0, collate_fn=collate,
        )  # fmt: skip
        res = evaluate(model, loader, cfg.num_classes, device=device)
    classes = source.classes
    present = [i for i, acc in enumerate(res["per_class"]) if acc is not None]
    report = {
        "data": str(args.data),
        "model": cfg.name,
        "weights": str(args.weights) if args.weights else None,
        "preprocess": pre.to_dict(),
        "n": res["n"],
        "top1": res["top1"],
        "top5": res["top5"],
        "loss": res["loss"],
        "images_per_s": res["images_per_s"],
        "per_class": {classes[i]: res["per_class"][i] for i in present},
        "skipped": res["skipped"],
        "skipped_files": res["skipped_files"],
        "confusion": res["confusion"] if cfg.num_classes <= 100 else None,
    }
    if args.output:
        from ..core.files import write_text

        write_text(args.output, json.dumps(report, indent=2) + "\n")
    if args.confusion:
        from ..train.plots import confusion_matrix

        cm = res["confusion"]
        if cfg.num_classes > len(present):  # only the classes the data has, so the picture stays readable
            cm = [[cm[i][j] for j in present] for i in present]
        title = f"{cfg.name} on {Path(str(args.data)).name}: top-1 {100 * res['top1']:.2f}%"
        confusion_matrix(cm, [classes[i] for i in present], args.confusion, title=title)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _summary(report, pre, args)
    for msg in res["skipped_files"][:5]:
        print(f"cvt eval: skipped {msg}", file=__import__("sys").stderr)
    return 1 if res["skipped"] else 0


def _summary(r: dict, pre, args: argparse.Namespace) -> None:
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
    written = [p for p in (args.output, args.confusion) if p]
    if written:
        print("  wrote " + ", ".join(written))
