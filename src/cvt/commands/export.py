"""``cvt export``: ONNX / TorchScript / ExportedProgram with dynamic batch (and size), verified against eager."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError, UserError, user_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX, TorchScript or a torch.export program (verified against eager)",
        description="Export a model with a dynamic batch dimension (and dynamic height/width for onnx and "
        "exported-program), then load the file back and check it against eager PyTorch on several shapes.",
    )
    p.add_argument("output", help="output file (.onnx, .pt, .pt2; the suffix is added when missing)")
    p.add_argument("--model", default="cvt-13", help="architecture or checkpoint name (default: cvt-13)")
    p.add_argument("--weights", default=None, help="weight file or directory (default: random init)")
    p.add_argument("--format", choices=("onnx", "torchscript", "exported-program"), default="onnx")
    p.add_argument("--resolution", type=int, default=None, help="example input size (default: the model's)")
    p.add_argument("--static-hw", action="store_true", help="fix height and width to --resolution")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted difference to eager (1e-4)")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..export import SUFFIX, ExportError, export_model
    from ..factory import create_model

    out = Path(args.output)
    if out.suffix != SUFFIX[args.format]:
        out = out.with_name(out.name + SUFFIX[args.format])
    if out.exists() and not args.force:
        raise UsageError(f"{out}: already exists (use --force to overwrite)")
    with user_errors():
        model = create_model(args.model, weights=args.weights).eval()
    try:
        res = export_model(model, out, args.format, args.resolution, not args.static_hw, args.atol)
    except ExportError as e:
        raise UserError(str(e)) from None
    shapes = ", ".join("x".join(map(str, s)) for s in res.checked_shapes)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({args.format}, {size:.1f} MiB); max |diff| vs eager {res.max_abs_diff:.2e} on {shapes}")
    return 0
