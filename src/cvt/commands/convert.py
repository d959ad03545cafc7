"""``cvt convert SRC DST --to {native,official,hf}``: any supported weight layout to any other."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

from ..core.config import ACTIVATIONS
from ..core.errors import UsageError
from ..core.files import HF_DIR, NATIVE_DIR, check_destination, check_suffix, check_writable
from ..torch.factory import create_model
from ..torch.weights import save_native, save_official, save_pretrained
from ._signature import Arg

# What the consumer of a layout that records no activation computes (native files record theirs).
COMPUTES = {"hf": ("transformers' CvT", "gelu"), "official": ("microsoft/CvT", "quick_gelu")}
LAYOUT = {"hf": "an HF directory", "official": "an official .pth"}


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
    The activation is the one every verb runs SRC with: what a native file records, else quick_gelu with a
    released checkpoint --model, else gelu for an HF directory, else quick_gelu. hf and official files record
    none: converting a model whose activation differs from what their code computes prints a note on stderr.
    hf writes what transformers' pipeline("image-classification") and the hub need: config.json with the class
    names, model.safetensors, preprocessor_config.json and a model card README.md (one you wrote is kept).

    Args:
        src: weight file or directory
        dst: output file or directory (written atomically)
        to: output layout
        model: architecture name when SRC does not describe itself (official .pth); default: inferred
        activation: activation recorded in a native file (default: the source's); with --to hf / official it
            can only name what their code computes
        force: overwrite DST if it exists (a directory only if cvt wrote it: files of yours are never replaced)
    """
    out = Path(dst)
    as_dir = to == "hf" or (to == "native" and out.suffix != ".safetensors")
    # before the work: a directory, FIFO or read-only folder, a suffix of another format, a directory whose
    # files cvt did not write (--force never replaces those) are refused however long the conversion would take
    if as_dir:
        check_destination(out, HF_DIR if to == "hf" else NATIVE_DIR)
    else:
        check_writable(out)
        if to == "official":
            check_suffix(out, (".pth", ".pt"), "an official state dict")
    if os.path.lexists(out) and not force:
        raise UsageError(f"{out}: already exists (use --force to overwrite)")
    if Path(src).resolve() == out.resolve():
        raise UsageError(f"{out}: destination is the source")
    consumer, computes = COMPUTES.get(to, (None, None))
    if activation is not None and computes is not None and activation != computes:
        raise UsageError(
            f"--activation {activation}: {LAYOUT[to]} records no activation, and {consumer} computes {computes}"
        )
    # Building and strictly loading the model proves the file is a complete, consistent CvT.
    net = create_model(model, weights=src, activation=activation)
    sd, cfg, spec = net.state_dict(), net.config, net.pretrained_cfg
    if to == "native":
        out = save_native(sd, cfg, out, spec)
    elif to == "hf":
        # the whole pipeline-ready directory: real id2label (a named set too), processor, model card
        out = save_pretrained(net, out, activation=activation)
    else:
        out = save_official(sd, out)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    print(f"wrote {out} ({to} layout, {len(sd)} tensors, {n:,} values, {cfg.name}, {cfg.num_classes} classes)")
    if computes is not None and cfg.activation != computes:  # after the write: a failure stays one line
        print(
            f"cvt convert: note: {src} runs {cfg.activation}, but {consumer} computes {computes}: its outputs on "
            f"{out} will differ slightly from cvt's on {src} (pass --activation {computes} to accept that)",
            file=sys.stderr,
        )
    return 0
