"""``cvt convert SRC DST --to {native,official,hf}``: any supported weight layout to any other."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError, user_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert weights between layouts (official .pth, HF directory, cvt-torch .safetensors)",
        description="Read SRC in any supported layout (detected from its keys) and write DST. "
        "native: a .safetensors file with the config in its metadata (or a directory if DST has no suffix); "
        "hf: a directory for transformers' CvtForImageClassification.from_pretrained; "
        "official: a plain .pth state dict with microsoft/CvT key names.",
    )
    p.add_argument("src", help="weight file or directory")
    p.add_argument("dst", help="output file or directory (written atomically)")
    p.add_argument("--to", choices=("native", "official", "hf"), required=True, help="output layout")
    p.add_argument(
        "--model",
        default=None,
        help="architecture name when SRC does not describe itself (official .pth); default: inferred",
    )
    p.add_argument(
        "--activation",
        choices=("quick_gelu", "gelu"),
        default=None,
        help="activation recorded in a native file (default: the source's; quick_gelu for official)",
    )
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ..factory import create_model
    from ..weights.io import save_hf, save_native, save_official

    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise UsageError(f"{dst}: already exists (use --force to overwrite)")
    if Path(args.src).resolve() == dst.resolve():
        raise UsageError(f"{dst}: destination is the source")
    with user_errors():
        # Building and strictly loading the model proves the file is a complete, consistent CvT.
        model = create_model(args.model, weights=args.src, activation=args.activation)
        sd, cfg = model.state_dict(), model.config
        if args.to == "native":
            out = save_native(sd, cfg, dst)
        elif args.to == "hf":
            out = save_hf(sd, cfg, dst)
        else:
            out = save_official(sd, dst)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    print(f"wrote {out} ({args.to} layout, {len(sd)} tensors, {n:,} values, {cfg.name}, {cfg.num_classes} classes)")
    return 0
