"""Export a Keras CvT for serving: TensorFlow SavedModel and LiteRT (``.tflite``, builtin ops only).

Both go through ``keras.Model.export`` and need the TensorFlow backend's tensorflow package (TF 2.16+).
The signature is ``(None, H, W, C)`` float32 (``(None, C, H, W)`` for a channels-first model): any batch size,
a fixed image size (``img_size`` of the config unless given), which is what LiteRT wants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras

from ..core.errors import require
from ..core.export import DEFAULT_ATOL, check_atol
from .backend import check_tensorflow_backend
from .classifier import CvTImageClassifier


def input_spec(model: CvTImageClassifier, image_size: int | tuple[int, int] | None = None) -> Any:
    """The export signature: ``InputSpec`` of ``(None, H, W, C)`` in the model's data format."""
    cfg = model.cvt_config
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size or (cfg.img_size, cfg.img_size)
    fmt = model.backbone.data_format
    shape = (None, h, w, cfg.in_chans) if fmt == "channels_last" else (None, cfg.in_chans, h, w)
    return [keras.InputSpec(shape=shape, dtype="float32")]


def export_saved_model(
    model: CvTImageClassifier, path: str | os.PathLike[str], image_size: int | tuple[int, int] | None = None
) -> Path:
    """A TF SavedModel directory with a ``serve`` endpoint (``tf.saved_model.load(path).serve(x)``)."""
    check_tensorflow_backend("SavedModel export", keras.backend.backend())
    require("tensorflow", "keras", "SavedModel export")
    model.export(str(path), format="tf_saved_model", input_signature=input_spec(model, image_size), verbose=False)
    return Path(path)


def export_litert(
    model: CvTImageClassifier, path: str | os.PathLike[str], image_size: int | tuple[int, int] | None = None
) -> Path:
    """A LiteRT flatbuffer (``.tflite``) with TFLite builtin ops only (no Flex / select-TF ops)."""
    check_tensorflow_backend("LiteRT export", keras.backend.backend())
    require("tensorflow", "keras", "LiteRT export")
    model.export(str(path), format="litert", input_signature=input_spec(model, image_size), verbose=False)
    return Path(path)


def run_exported(path: str | os.PathLike[str], fmt: str) -> Any:
    """A callable ``x (numpy) -> logits (numpy)`` over an exported SavedModel or LiteRT file."""
    import numpy as np
    import tensorflow as tf

    if fmt == "saved-model":
        served = tf.saved_model.load(str(path))
        return lambda x: served.serve(x).numpy()
    interp = tf.lite.Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        interp.resize_tensor_input(inp["index"], x.shape)
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


def export_verified(
    model: CvTImageClassifier,
    path: str | os.PathLike[str],
    fmt: str,
    image_size: int | None = None,
    atol: float = DEFAULT_ATOL,
    batch_sizes: tuple[int, ...] = (1, 3),
) -> float:
    """Export (``fmt``: ``"saved-model"`` or ``"litert"``) to a temporary path beside ``path``, reload it, compare
    with Keras eager on random inputs of several batch sizes, and publish it at ``path`` only if every output is
    within ``atol`` (:func:`cvt.core.files.atomic_write` / ``atomic_write_dir`` with ``check``: the rule of every
    export). Returns the largest difference; raises :class:`~cvt.core.errors.CvtError` otherwise, leaving nothing
    at ``path`` (an existing file or SavedModel there unchanged) and no temporary file.
    """
    import numpy as np

    from ..core.errors import CvtError, UsageError
    from ..core.files import SAVED_MODEL, atomic_write, atomic_write_dir, check_destination, check_writable

    if fmt not in ("saved-model", "litert"):
        raise UsageError(f"unknown Keras export format {fmt!r} (use saved-model or litert)")
    check_tensorflow_backend(f"{fmt} export", keras.backend.backend())  # before the slow trace, not a pip hint
    atol = check_atol(atol)
    path = Path(path)
    saved_model = fmt == "saved-model"
    if saved_model:  # before the slow trace: writable, and no user file that the export would replace
        check_destination(path, SAVED_MODEL)
    else:
        check_writable(path)
    cfg = model.cvt_config
    size = image_size or cfg.img_size
    worst = 0.0

    def write(tmp: Path) -> None:
        # a SavedModel is written INTO the temporary directory, a LiteRT file over the temporary file
        (export_saved_model if saved_model else export_litert)(model, tmp, size)

    def verify(tmp: Path) -> None:
        nonlocal worst
        run = run_exported(tmp, fmt)
        rng = np.random.default_rng(0)
        for b in batch_sizes:
            shape = (b, size, size, cfg.in_chans)
            if model.backbone.data_format == "channels_first":
                shape = (b, cfg.in_chans, size, size)
            x = rng.standard_normal(shape).astype(np.float32)
            ref = keras.ops.convert_to_numpy(model(x, training=False))
            worst = max(worst, float(np.abs(run(x) - ref).max()))
        if not worst <= atol:
            raise CvtError(
                f"{path}: the {fmt} export differs from Keras eager by {worst:.2e} (> atol {atol}); not written"
            )

    if saved_model:  # into an existing folder only when it is a SavedModel already, or has no entry of one
        atomic_write_dir(path, write, check=verify, kind=SAVED_MODEL)
    else:
        atomic_write(path, write, check=verify)
    return worst
