"""``cvt convert SRC DST --to {native,official,hf}``: any supported weight layout to any other."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from ..core.config import ACTIVATIONS
from ..core.errors import UsageError
from ..factory import create_model
from ..weights.io import save_hf, save_native, save_official
from ._signature import Arg


def run_convert(
    src: str,
    dst: str,
    *,
    to: Literal["native", "official", "hf"],
    model: str | None = None,
    activation: Annotated[str | None, Arg(choices=ACTIVATIONS)] = None,
    force: bool = False,
) -> int:
    """Read SRC in any supported layout (detected from its keys) and write DST. native: a .safetensors file with
    the config in its metadata (or a directory if DST has no suffix); hf: a directory for transformers'
    CvtForImageClassification.from_pretrained; official: a plain .pth state dict with microsoft/CvT key names.

    Args:
        src: weight file or directory
        dst: output file or directory (written atomically)
        to: output layout
        model: architecture name when SRC does not describe itself (official .pth); default: inferred
        activation: activation recorded in a native file (default: the source's; quick_gelu for official)
        force: overwrite DST if it exists
    """
    out = Path(dst)
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists (use --force to overwrite)")
    if Path(src).resolve() == out.resolve():
        raise UsageError(f"{out}: destination is the source")
    # Building and strictly loading the model proves the file is a complete, consistent CvT.
    net = create_model(model, weights=src, activation=activation)
    sd, cfg, spec = net.state_dict(), net.config, net.pretrained_cfg
    if to == "native":
        out = save_native(sd, cfg, out, spec)
    elif to == "hf":
        out = save_hf(sd, cfg, out, list(spec.labels) if isinstance(spec.labels, tuple) else None)
    else:
        out = save_official(sd, out)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    print(f"wrote {out} ({to} layout, {len(sd)} tensors, {n:,} values, {cfg.name}, {cfg.num_classes} classes)")
    return 0
