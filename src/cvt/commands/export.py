"""``cvt export``: ONNX / TorchScript / ExportedProgram with dynamic batch (and size), verified against eager."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from ..core import bounds
from ..core.errors import UsageError
from ..core.export import check_atol
from ..core.files import check_writable, check_writable_dir
from ..core.presets import DEFAULT_MODEL
from ..torch.export import FORMATS, SUFFIX, export_model
from ..torch.factory import create_model
from ._signature import Arg, default_of

KERAS_FORMATS = {"saved-model": "", "litert": ".tflite"}  # through cvt.keras on the TensorFlow backend


def run_export(
    output: str,
    *,
    model: str | None = None,
    weights: str | None = None,
    format: Annotated[str, Arg(choices=(*FORMATS, *KERAS_FORMATS))] = default_of(export_model, "fmt"),
    resolution: int | None = None,
    static_hw: bool = False,
    atol: float = default_of(export_model, "atol"),
    force: bool = False,
) -> int:
    """Export a model, fused for inference, with a dynamic batch dimension (and dynamic height/width for onnx and
    exported-program), then load the file back and check it against eager PyTorch on several shapes; the file is
    published only if it passes.

    Args:
        output: output file (.onnx, .pt, .pt2, .tflite; the suffix is added when missing, unless OUTPUT exists) or
            SavedModel directory
        model: architecture or checkpoint name (default: what --weights holds; cvt-13, randomly initialised,
            without --weights)
        weights: weight file or directory (default: random init)
        format: export format (saved-model and litert go through the Keras model on TensorFlow)
        resolution: example input size (default: the model's)
        static_hw: fix height and width to --resolution
        atol: largest accepted difference to eager (a finite number >= 0)
        force: overwrite the output if it exists
    """
    atol = check_atol(atol, "--atol")
    bounds.check_options(resolution=(resolution, bounds.RESOLUTION))
    out = Path(output)
    suffix = KERAS_FORMATS.get(format, SUFFIX.get(format, ""))
    if out.suffix != suffix and not os.path.lexists(out):  # an existing OUTPUT is what the user named
        out = out.with_name(out.name + suffix)
    # the destination's kind and permissions first: --force cannot help a directory, a FIFO or a read-only folder
    (check_writable_dir if format == "saved-model" else check_writable)(out)
    if os.path.lexists(out) and not force:
        raise UsageError(f"{out}: already exists (use --force to overwrite)")
    if model is None and weights is None:
        model = DEFAULT_MODEL
    if format in KERAS_FORMATS:
        return _export_keras(out, model, weights, format, resolution, atol)
    # export_model fuses the model itself and verifies the export against this unfused reference
    source = str(weights) if weights is not None else ""  # for the ONNX metadata when the spec names no source
    res = export_model(
        create_model(model, weights=weights), out, format, resolution, not static_hw, atol, source=source
    )
    shapes = ", ".join("x".join(map(str, s)) for s in res.checked_shapes)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({format}, {size:.1f} MiB); max |diff| vs eager {res.max_abs_diff:.2e} on {shapes}")
    return 0


def _export_keras(
    out: Path, model: str | None, weights: str | None, format: str, resolution: int | None, atol: float
) -> int:
    from ..core.errors import require

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from ..keras.backend import check_tensorflow_backend  # (cvt.keras: a bad KERAS_BACKEND is one line already)

    check_tensorflow_backend(f"--format {format}")  # KERAS_BACKEND=torch: a usage error, not "pip install ..."
    require("tensorflow", "keras", f"--format {format}")
    import cvt.keras as ck
    from cvt.keras.export import export_verified

    net = ck.create_model(model, weights=weights)
    diff = export_verified(net, out, format, resolution, atol)
    size = sum(p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file()) / 2**20
    print(f"wrote {out} ({format}, {size:.1f} MiB); max |diff| vs Keras eager {diff:.2e} on batch 1 and 3")
    return 0
