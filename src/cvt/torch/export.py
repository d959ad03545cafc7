"""Export a CvT to ONNX, TorchScript or a ``torch.export`` ExportedProgram, each verified against eager.

What is exported is the fused model (:func:`cvt.fuse`: folded BatchNorm, SiLU MLPs, cls-only last
block); what it is verified against is the unfused reference model in eager PyTorch.

Every exporter gets a dynamic batch dimension; ONNX and the ExportedProgram also get dynamic height and width
(CvT has no positional embedding). The PT2 exporters specialise maps of size 1, so a dynamic-size export
is valid for inputs whose every map, key/value maps included, is at least 2x2 (>= 64x64 for the released
models; the exporter records that as a guard).

ONNX files name their dynamic axes (``pixel_values`` ``(batch, 3, height, width)`` -> ``logits`` ``(batch,
num_classes)``) and carry what a serving stack needs in ``metadata_props``: labels, preprocessing, activation, the
config, the cvt version and the source (:mod:`cvt.core.onnxmeta`; :class:`cvt.Predictor` reads them back).

Published only once verified: the file is written to a temporary file beside the destination, loaded back from
there and run on several shapes; only when the largest absolute difference to eager PyTorch is <= ``atol`` is it
renamed into place (:func:`cvt.core.files.atomic_write` with ``check``). A failed export leaves nothing at the
destination (an existing file there unchanged) and no temporary file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import onnxmeta
from ..core.config import CvTConfig
from ..core.errors import CvtError, first_line
from ..core.export import DEFAULT_ATOL, check_atol
from ..core.files import atomic_write, check_writable
from ..core.presets import default_spec
from ..core.spec import PretrainedSpec
from .fusion import fuse
from .model import CvT

FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


class ExportError(CvtError, RuntimeError):
    """An export that failed or does not reproduce eager outputs."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)


class _Logits(nn.Module):
    """A plain ``forward(pixel_values) -> logits`` wrapper (one input, one output, no Python options)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def default_check_shapes(img_size: int, dynamic_hw: bool) -> list[tuple[int, int, int, int]]:
    shapes = [(1, 3, img_size, img_size), (3, 3, img_size, img_size)]
    if dynamic_hw:
        shapes.append((2, 3, img_size + 32, img_size + 16))
    return shapes


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    fmt: str = "onnx",
    img_size: int | None = None,
    dynamic_hw: bool = True,
    atol: float = DEFAULT_ATOL,
    check_shapes: Sequence[tuple[int, int, int, int]] | None = None,
    opset: int = 18,
    source: str = "",
) -> ExportResult:
    """Export ``model`` (eval mode; a :class:`~cvt.torch.model.CvT` is fused first) to ``path``, verified before it is
    published there.

    Args:
        model: a :class:`~cvt.torch.model.CvT` (or any image model with ``forward(x) -> logits``); left unchanged
            but for being put in eval mode.
        path: output file (written atomically, and only once verified).
        fmt: ``"onnx"``, ``"torchscript"`` or ``"exported-program"``.
        img_size: example resolution (default: ``model.config.img_size``).
        dynamic_hw: make height and width dynamic too (ONNX, ExportedProgram; TorchScript traces are
            shape-generic for this model anyway, and are checked on the same shapes).
        atol: largest accepted absolute difference to the eager (unfused) model on the check shapes (finite, >= 0).
        check_shapes: input shapes to verify on (default: batch 1 and 3, and a non-square size).
        opset: the ONNX opset.
        source: where the weights came from, for the ONNX metadata when the model's spec names nothing.

    Raises:
        ExportError: the exporter failed, or outputs differ by more than ``atol`` (nothing is written).
        UsageError: an invalid ``atol``. WriteError: ``path`` cannot be written (checked before tracing).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")
    atol = check_atol(atol)
    path = Path(path)
    if fmt == "exported-program" and path.suffix != ".pt2":
        raise ExportError(f"{path}: an ExportedProgram file must end in .pt2")
    check_writable(path)  # before the slow trace
    size = img_size or getattr(getattr(model, "config", None), "img_size", 224)
    reference = _Logits(model).eval()
    wrapped = _Logits(fuse(model) if isinstance(model, CvT) and not model.fused else model).eval()
    # batch 2 example: exporting with batch 1 lets the exporter specialise the batch dimension to 1
    example = torch.randn(2, 3, size, size)
    shapes = list(check_shapes or default_check_shapes(size, dynamic_hw))
    try:
        meta = onnx_metadata(model, None if dynamic_hw else size, source) if fmt == "onnx" else {}
        save, load = _exporter(fmt, wrapped, example, dynamic_hw, opset, meta)
    except ExportError:
        raise
    except Exception as e:  # exporters raise many types; report one line
        raise ExportError(f"{fmt} export failed: {type(e).__name__}: {first_line(e)}") from e

    def write(tmp: Path) -> None:
        try:
            save(tmp)
        except OSError:
            raise  # the disk: atomic_write names the destination and the reason
        except Exception as e:
            raise ExportError(f"{path}: writing the {fmt} file failed: {type(e).__name__}: {first_line(e)}") from e

    worst = 0.0

    def verify(tmp: Path) -> None:
        nonlocal worst
        try:
            runner = load(tmp)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(
                f"{path}: the {fmt} file does not load back ({type(e).__name__}: {first_line(e)}); not written"
            ) from e
        for shape in shapes:
            x = torch.randn(shape)
            try:
                with torch.no_grad():
                    ref = reference(x)
                    got = runner(x)
                diff = (torch.as_tensor(got) - ref).abs().max().item()
            except Exception as e:
                raise ExportError(
                    f"{path}: the {fmt} file fails at input {shape} ({type(e).__name__}: {first_line(e)}); not written"
                ) from e
            worst = max(worst, diff)
            if not diff <= atol:
                raise ExportError(
                    f"{path}: {fmt} output differs from eager by {diff:.3g} > atol {atol} at input {shape}; not written"
                )

    atomic_write(path, write, check=verify)
    return ExportResult(path, fmt, worst, [tuple(s) for s in shapes])


Saver = Callable[[Path], None]
Loader = Callable[[Path], Callable[[torch.Tensor], Any]]


def onnx_metadata(model: nn.Module, static_size: int | None = None, source: str = "") -> dict[str, str]:
    """The ``metadata_props`` an ONNX export of ``model`` carries (:func:`cvt.core.onnxmeta.encode_metadata`).

    ``static_size``: the fixed input size of an export without dynamic height and width; the preprocessing then
    produces that size (keeping the checkpoint's crop rule), so the file's own metadata runs it.
    """
    config = getattr(model, "config", None)
    config = config if isinstance(config, CvTConfig) else None
    spec = getattr(model, "pretrained_cfg", None)
    if not isinstance(spec, PretrainedSpec):  # a model built outside cvt's factory: the config's default
        spec = default_spec(config) if config is not None else None
    if spec is not None and static_size is not None and static_size != spec.preprocess.img_size:
        spec = spec.replace(preprocess=dataclasses.replace(spec.preprocess, img_size=static_size))
    return onnxmeta.encode_metadata(config, spec, source=source)


def _exporter(
    fmt: str, wrapped: nn.Module, example: torch.Tensor, dynamic_hw: bool, opset: int, meta: dict[str, str]
) -> tuple[Saver, Loader]:
    """Trace / export once; ``(save(file), load(file) -> runner)`` for the format."""
    if fmt == "onnx":
        program = _onnx_program(wrapped, example, dynamic_hw, opset)
        program.model.metadata_props.update(meta)
        # one self-contained file: external data would be named after the temporary file and lost by the rename
        return (lambda tmp: program.save(str(tmp), external_data=False)), partial(_onnx_runner, expected=meta)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, example, check_trace=False)
        return (lambda tmp: torch.jit.save(traced, str(tmp))), (lambda tmp: torch.jit.load(str(tmp)))
    exported = _export_program(wrapped, example, dynamic_hw)
    return (lambda tmp: torch.export.save(exported, str(tmp))), (lambda tmp: torch.export.load(str(tmp)).module())


def _dims(dynamic_hw: bool) -> dict[int, object]:
    dyn = torch.export.Dim.DYNAMIC
    return {0: dyn, 2: dyn, 3: dyn} if dynamic_hw else {0: dyn}


def _export_program(wrapped: nn.Module, example: torch.Tensor, dynamic_hw: bool) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(wrapped, (example,), dynamic_shapes={"pixel_values": _dims(dynamic_hw)})


def _onnx_program(wrapped: nn.Module, example: torch.Tensor, dynamic_hw: bool, opset: int) -> Any:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the export extra: pip install 'cvt-models[export]'") from None
    with torch.no_grad():
        return torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=[onnxmeta.INPUT_NAME],
            output_names=[onnxmeta.OUTPUT_NAME],
            # names, not Dim.DYNAMIC: the exporter gives the axes these names (and the output's batch the same)
            dynamic_shapes={onnxmeta.INPUT_NAME: onnxmeta.INPUT_AXES if dynamic_hw else onnxmeta.STATIC_INPUT_AXES},
            opset_version=opset,
            verbose=False,
        )


def _onnx_runner(path: Path, expected: Mapping[str, str]) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("verifying ONNX needs onnxruntime: pip install 'cvt-models[export]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    # what a serving stack will read: the metadata as written
    stored = session.get_modelmeta().custom_metadata_map
    lost = sorted(k for k, v in expected.items() if stored.get(k) != v)
    if lost:
        raise ExportError(f"the written ONNX file lost its metadata ({', '.join(lost)}); not written")

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"pixel_values": x.numpy()})[0])

    return run
