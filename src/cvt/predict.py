"""``Predictor``: build the model, its preprocessing and its class names once, then classify many images.

>>> p = cvt.Predictor("cvt-13")                      # released checkpoint (downloaded once, cached)
>>> p("cat.jpg")                                     # Prediction(path='cat.jpg', labels=[...], ...)
>>> p([pil_image, np_hwc_uint8, "dog.png"], topk=3)  # a list in, a list out

An exported ONNX file (``cvt export``) runs through onnxruntime, with the preprocessing and class names its
metadata carries (:mod:`cvt.core.onnxmeta`): ``cvt.Predictor(weights="model.onnx")``.

Inputs: paths, PIL images (any mode), numpy arrays (``(H, W)`` / ``(H, W, C)`` uint8 or uint16), uint8
tensors ``(C, H, W)`` -- all decoded and preprocessed like the official evaluation -- and float tensors
``(3, H, W)`` / ``(B, 3, H, W)``, taken as already-preprocessed model input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader

from .core import onnxmeta
from .core.errors import ImageError, UsageError, WeightsError, require
from .core.evaluation import NON_FINITE, NonFiniteOutputError, finite_rows
from .core.images import DEFAULT_MAX_PIXELS, load_image, to_pil
from .core.labels import resolve_labels
from .core.presets import DEFAULT_MODEL, default_spec, weight_source
from .core.spec import EvalPreprocess
from .data.datasets import EvalSet, collate
from .data.sources import ImageFiles
from .data.transforms import build_eval_transform
from .explain import cls_attention
from .torch.factory import create_model
from .torch.fusion import fuse
from .torch.model import CvT
from .torch.runtime import resolve_device


class PredictorError(UsageError):
    """Arguments that cannot make a predictor (no weights for a name, bad ``topk`` ...)."""


@dataclass(frozen=True)
class Prediction:
    """Top-k for one image: ``labels[i]`` is class ``indices[i]`` with softmax probability ``probs[i]``."""

    path: str | None  # the file, or None for an in-memory image
    labels: list[str]
    indices: list[int]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchResult:
    """One batch of :meth:`Predictor.iter_files`: answers, failures, and (optionally) attention maps."""

    predictions: list[Prediction]
    failures: list[tuple[str, str]]  # (path, "path: reason")
    inputs: torch.Tensor | None = None  # (B, 3, S, S): the preprocessed inputs of ``predictions``
    heatmaps: torch.Tensor | None = None  # (B, H_kv, W_kv) with explain=True


class _Files(ImageFiles):
    """The input files in order; the "class" of each is its position, so ``collate`` tells which ones decoded."""

    def __init__(self, paths: Sequence[str], max_pixels: int | None):
        super().__init__([(path, i) for i, path in enumerate(paths)], classes=paths)
        self.max_pixels = max_pixels

    def load(self, i: int) -> tuple[Image.Image, int]:  # NOTE ImageFiles.load has no pixel limit to pass on
        path, position = self.samples[i]
        return load_image(path, self.max_pixels), position


class Predictor:
    """Classify images with a CvT; the model, transform and labels are built once.

    Args:
        model: a checkpoint or architecture name, a :class:`~cvt.torch.model.CvT`, or ``None`` (``"cvt-13"``, or
            the architecture ``weights`` describes).
        weights: a local weight file or directory (any layout ``create_model`` reads), or an ONNX file
            (``.onnx``: run by onnxruntime, :class:`OnnxModel`; its metadata gives preprocessing and labels).
        pretrained: download the released checkpoint ``model``; ``None``: yes for a checkpoint name without
            ``weights``. ``False`` with no weights gives a randomly initialised model (demos, tests).
        labels: a label file (lines or JSON) or a list of names; default: the model's own names (HF
            ``id2label``), else ImageNet-1k for 1000 classes.
        topk: how many classes per image (capped at the number of classes).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        preprocess: override the checkpoint's preprocessing.
        activation: override the activation (``"quick_gelu"`` for released checkpoints, ``"gelu"`` for HF's).
        batch_size, num_workers: for :meth:`iter_files` (and the batching of list inputs).
        max_pixels: refuse image files with more pixels (decompression bombs).
        explain: keep what attention maps need (:meth:`iter_files` ``explain=True``, :func:`cvt.explain.cls_attention`
            on ``.model``): the model is fused without the cls-only last block, about 7% more MACs.

    The model is fused for inference once, here (:func:`cvt.fuse`: BatchNorm folded into the depthwise
    convolutions, QuickGELU MLPs as one SiLU, the cls-only last block); a :class:`~cvt.torch.model.CvT` passed in is
    copied, not rewritten, and one that is already fused is used as it is.
    """

    def __init__(
        self,
        model: str | CvT | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        pretrained: bool | None = None,
        labels: str | os.PathLike[str] | Sequence[str] | None = None,
        topk: int = 5,
        device: str | torch.device | None = None,
        preprocess: EvalPreprocess | None = None,
        activation: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        explain: bool = False,
    ):
        _at_least(topk=(topk, 1), batch_size=(batch_size, 1), num_workers=(num_workers, 0))
        if max_pixels is not None:
            _at_least(max_pixels=(max_pixels, 1))
        self.model: CvT | OnnxModel
        if is_onnx(weights):
            self.model = OnnxModel.for_predictor(weights, model, pretrained, activation, explain, device, preprocess)
            self.device = torch.device("cpu")  # onnxruntime takes numpy from the CPU, whatever its provider
            spec = self.model.spec
        else:
            self.device = resolve_device(device)
            built = self._build(model, weights, pretrained, activation).to(self.device)
            self.model = built.eval() if built.fused else fuse(built, cls_only=not explain, inplace=built is not model)
            spec = getattr(self.model, "pretrained_cfg", None) or default_spec(self.model.config)
        self.preprocess = preprocess or spec.preprocess
        self.transform = build_eval_transform(self.preprocess)
        self.labels = resolve_labels(self.model.num_classes, spec.labels, labels)
        self.topk, self.batch_size, self.num_workers, self.max_pixels = topk, batch_size, num_workers, max_pixels
        self.explain = explain

    @staticmethod
    def _build(model: str | CvT | None, weights: Any, pretrained: bool | None, activation: str | None) -> CvT:
        if isinstance(model, CvT):
            if weights is not None or pretrained:
                raise PredictorError("give a CvT instance or weights/pretrained, not both")
            return model
        source = weight_source(DEFAULT_MODEL if model is None and weights is None else model, weights)
        if pretrained is None:
            pretrained = source.pretrained
            if not source.has_weights:
                raise PredictorError(f"{model!r} has no released weights: pass weights= (or pretrained=False)")
        built = create_model(source.name, weights=source.weights, pretrained=pretrained, activation=activation)
        if built.num_classes < 1:
            raise PredictorError("the model has no classification head (num_classes=0)")
        return built

    # ------------------------------------------------------------------ tensors
    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` preprocessed input -> ``(B, num_classes)`` softmax probabilities (float32, CPU)."""
        logits = self.model(x.to(self.device, torch.float32))
        return logits.float().softmax(dim=-1).cpu()

    def _records(self, probs: torch.Tensor, paths: Sequence[str | None], topk: int | None) -> list[Prediction]:
        k = min(topk or self.topk, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)  # (B, k)
        return [
            Prediction(path, [self.labels[i] for i in idx], idx, [float(v) for v in val])
            for path, idx, val in zip(paths, indices.tolist(), values)
        ]

    def prepare(self, item: Any) -> torch.Tensor:
        """One input (path, PIL, array, uint8 tensor) -> ``(3, S, S)`` preprocessed tensor."""
        if isinstance(item, (str, os.PathLike)):
            return self.transform(load_image(item, self.max_pixels))
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            if item.ndim != 3:
                raise ImageError(f"float tensors are model input (3, H, W) or (B, 3, H, W); got {tuple(item.shape)}")
            return item
        return self.transform(to_pil(item))

    # ------------------------------------------------------------------ public calls
    def predict(self, inputs: Sequence[Any] | torch.Tensor, topk: int | None = None) -> list[Prediction]:
        """Top-k for each input (raises :class:`~cvt.core.errors.ImageError` on an unusable one, and
        :class:`~cvt.core.evaluation.NonFiniteOutputError` naming the first input whose output is NaN or inf)."""
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.ndim == 4:
            probs = self.probabilities(inputs)
            self._refuse_non_finite(probs, [f"input {i}" for i in range(len(inputs))])
            return self._records(probs, [None] * len(inputs), topk)
        out: list[Prediction] = []
        items = list(inputs)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            x = torch.stack([self.prepare(it) for it in chunk])
            paths = [os.fspath(it) if isinstance(it, (str, os.PathLike)) else None for it in chunk]
            probs = self.probabilities(x)
            self._refuse_non_finite(probs, [p if p is not None else f"input {start + j}" for j, p in enumerate(paths)])
            out.extend(self._records(probs, paths, topk))
        return out

    @staticmethod
    def _refuse_non_finite(probs: torch.Tensor, names: Sequence[str]) -> None:
        """Raise :class:`NonFiniteOutputError` naming the first input whose ``(B, K)`` probabilities are not finite."""
        finite = finite_rows(probs.numpy())
        if not finite.all():
            first = int((~finite).nonzero()[0][0])
            raise NonFiniteOutputError(f"{names[first]}: {NON_FINITE}")

    def __call__(self, inputs: Any, topk: int | None = None) -> Prediction | list[Prediction]:
        """One input -> one :class:`Prediction`; a list (or a ``(B, 3, H, W)`` float tensor) -> a list."""
        single = not isinstance(inputs, (list, tuple)) and not (
            isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.ndim == 4
        )
        out = self.predict([inputs] if single else inputs, topk)
        return out[0] if single else out

    def iter_files(
        self, paths: Sequence[str], topk: int | None = None, explain: bool = False, progress: bool = False
    ) -> Iterator[BatchResult]:
        """Classify files in batches (decoding in ``num_workers`` DataLoader workers), in input order.

        Bad files never stop the run: they come back in ``BatchResult.failures`` as ``"path: reason"``, as do files
        whose output is not finite (NaN or inf: :data:`cvt.core.evaluation.NON_FINITE`).
        With ``explain`` (which needs ``Predictor(..., explain=True)``) each batch also carries its inputs and
        last-layer cls attention maps.
        """
        from tqdm import tqdm

        if explain and not self.explain:
            raise PredictorError("attention maps need Predictor(..., explain=True) (the cls-only model computes none)")

        paths = list(paths)
        loader = DataLoader(
            EvalSet(_Files(paths, self.max_pixels), self.transform),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
        )
        with tqdm(total=len(paths), unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for start, (x, positions, skipped) in zip(range(0, len(paths), self.batch_size), loader):
                kept = positions.tolist()
                failed = sorted(set(range(start, min(start + self.batch_size, len(paths)))) - set(kept))
                failures = dict(zip(failed, skipped))
                result = BatchResult([], [])
                if kept:
                    probs = self.probabilities(x)
                    finite = torch.from_numpy(finite_rows(probs.numpy()))  # NaN / inf: that input's error
                    failures.update({i: f"{paths[i]}: {NON_FINITE}" for i, ok in zip(kept, finite.tolist()) if not ok})
                    good = [i for i, ok in zip(kept, finite.tolist()) if ok]
                    result.predictions = self._records(probs[finite], [paths[i] for i in good], topk)
                    if explain and good:
                        result.inputs = x[finite]
                        result.heatmaps = cls_attention(self.model, result.inputs.to(self.device)).cpu()
                result.failures = [(paths[i], failures[i]) for i in sorted(failures)]  # in input order
                bar.update(len(kept) + len(failed))
                yield result


def is_onnx(weights: object) -> bool:
    """``weights`` names an ONNX file (by its suffix: what ``cvt export`` writes)."""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".onnx")


class OnnxModel:
    """An exported classifier run by onnxruntime: ``(B, 3, H, W)`` float tensor -> ``(B, num_classes)`` logits.

    ``spec``: preprocessing and class names from the file's metadata (:mod:`cvt.core.onnxmeta`). A file without
    cvt's ``preprocess`` metadata (exported elsewhere) runs only with ``preprocess`` given: without it the error
    names what is missing. Class names the file lacks come from ``labels=`` / ImageNet-1k / ``class_<i>`` as for
    any model. onnxruntime is imported here, only when an ONNX file is given.
    """

    fused = True  # what the Predictor asks of a torch model: nothing to fold here

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        preprocess: EvalPreprocess | None = None,
    ):
        require("onnxruntime", "export", "running an ONNX file")
        import onnxruntime as ort

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise WeightsError(f"{self.path}: no such file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # onnxruntime's warnings are not the user's business; errors still raise
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=_providers(ort, device))
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail ...): one line
            raise WeightsError(f"{self.path}: onnxruntime cannot load it ({' '.join(str(e).split())[:300]})") from None
        self.input, self.output = self._io()
        meta = onnxmeta.decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        lacking = onnxmeta.missing(meta) if preprocess is None else []
        if lacking:
            raise WeightsError(
                f"{self.path}: no cvt metadata {', '.join(map(repr, lacking))} in this ONNX file (it was not written "
                "by `cvt export`): re-export it with `cvt export`, or pass preprocess= to cvt.Predictor"
            )
        self.metadata = meta
        self.config = meta.config
        self.spec = meta.spec(preprocess or meta.preprocess)  # type: ignore[arg-type]  # checked just above
        self.num_classes = self._classes()

    @classmethod
    def for_predictor(
        cls,
        path: str | os.PathLike[str],
        model: object,
        pretrained: bool | None,
        activation: str | None,
        explain: bool,
        device: str | torch.device | None,
        preprocess: EvalPreprocess | None,
    ) -> OnnxModel:
        """The :class:`Predictor` arguments an ONNX file leaves no room for, refused in one line each."""
        if pretrained:
            raise PredictorError(f"{path}: an ONNX file holds its weights; pretrained=True does not apply")
        if explain:
            raise PredictorError(f"{path}: attention maps (explain) need the PyTorch model, not an ONNX file")
        if model is not None and not isinstance(model, str):
            raise PredictorError("give a model or an ONNX file, not both")
        onnx = cls(path, device, preprocess)
        if model is not None and (onnx.config is None or model != onnx.config.name):
            held = f"a {onnx.config.name}" if onnx.config is not None else "its own architecture"
            raise PredictorError(f"{path}: the ONNX file holds {held}, not {model!r} (drop --model)")
        if activation is not None and activation != onnx.metadata.activation:
            raise PredictorError(
                f"{path}: the ONNX graph computes {onnx.metadata.activation or 'its own activation'}; "
                f"activation={activation!r} cannot change it (re-export)"
            )
        return onnx

    def _io(self) -> tuple[str, str]:
        """The names of the one image input (4-d) and the one logits output (2-d)."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) < 1 or len(outputs[0].shape) != 2:
            shapes = (
                ", ".join(f"{v.name} {v.shape}" for v in inputs)
                + " -> "
                + ", ".join(f"{v.name} {v.shape}" for v in outputs)
            )
            raise WeightsError(
                f"{self.path}: not an image classifier with one (batch, 3, height, width) input and "
                f"(batch, classes) logits ({shapes})"
            )
        return inputs[0].name, outputs[0].name

    def _classes(self) -> int:
        classes = self.session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes > 0:
            return classes
        if self.config is not None and self.config.num_classes > 0:
            return self.config.num_classes
        raise WeightsError(f"{self.path}: the output {self.output!r} has no fixed number of classes")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float32 -> ``(B, num_classes)`` logits (CPU tensors)."""
        (logits,) = self.session.run([self.output], {self.input: x.detach().cpu().float().numpy()})
        return torch.from_numpy(logits)


def _providers(ort: object, device: str | torch.device | None) -> list[str]:
    """onnxruntime's execution providers for a device name: the CPU, or CUDA when this onnxruntime has it."""
    available = ort.get_available_providers()  # type: ignore[attr-defined]
    if device is None or str(device) == "auto":  # as for torch models: CUDA when there is one, else the CPU
        kind = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    else:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError) as e:
            raise PredictorError(f"device {device!r}: not a device name ({e})") from None
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise PredictorError(
        f"device {device!r}: this onnxruntime has no provider for it (available: {', '.join(available)}; "
        "CUDA needs the onnxruntime-gpu package)"
    )


def _at_least(**values: tuple[int, int]) -> None:
    """Raise :class:`PredictorError` naming the first argument below its minimum (``name=(value, minimum)``)."""
    for name, (value, minimum) in values.items():
        if value < minimum:
            raise PredictorError(f"{name} must be >= {minimum}, got {value}")


__all__ = ["BatchResult", "OnnxModel", "Prediction", "Predictor", "PredictorError", "is_onnx"]
