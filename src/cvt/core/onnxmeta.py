"""What a cvt ONNX file carries for serving stacks: axis names and ``metadata_props``. Framework-free.

An exported classifier maps ``pixel_values`` ``(batch, 3, height, width)`` float32 (RGB, preprocessed as
``preprocess`` says) to ``logits`` ``(batch, num_classes)``; the dynamic axes carry those names rather than the
exporter's ``s99`` / ``s100``. The file's ``metadata_props`` (strings, as ONNX requires; onnxruntime reads them with
``session.get_modelmeta().custom_metadata_map``) hold:

==============  ==========================================================================================
key             value
==============  ==========================================================================================
``format_tag``  ``cvt-onnx`` (this layout)
``cvt_version`` the cvt-models version that wrote the file
``config``      the :class:`~cvt.core.config.CvTConfig` JSON (architecture, class count, activation)
``activation``  ``quick_gelu`` or ``gelu``: what the graph computes (baked in; the weights need it)
``preprocess``  :meth:`EvalPreprocess.to_dict` JSON: ``img_size``, ``crop_pct``, ``interpolation``, ``mean``,
                ``std`` (resize the short side to ``int(img_size / crop_pct)``, centre-crop ``img_size``; a
                ``crop_pct`` of 1 squashes to ``img_size`` x ``img_size``; then ``(x / 255 - mean) / std``)
``labels``      JSON list of the class names in class-index order (ImageNet-1k's for released checkpoints)
``label_set``   ``imagenet-1k`` when ``labels`` is that named set (absent otherwise)
``source``      where the weights came from (a hub repo, a file, ``cvt train``)
``license``     the weights' licence, when known
==============  ==========================================================================================

:func:`encode_metadata` writes them, :func:`decode_metadata` reads them back (any of them may be absent from a
file someone else exported: the caller decides which it needs, :func:`missing`).
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import CvTConfig
from .errors import ConfigError, WeightsError, first_line
from .labels import LabelSet, shown_names
from .spec import EvalPreprocess, PretrainedSpec

FORMAT_TAG = "cvt-onnx"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
INPUT_AXES = {0: "batch", 2: "height", 3: "width"}  # (batch, 3, height, width)
STATIC_INPUT_AXES = {0: "batch"}  # an export with a fixed height and width
OUTPUT_AXES = {0: "batch"}  # (batch, num_classes): the same symbol as the input's batch


def encode_metadata(
    config: CvTConfig | None,
    spec: PretrainedSpec | None,
    *,
    version: str | None = None,
    source: str = "",
) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (every value a string).

    ``config``: the exported architecture (``None`` for a model that is not a CvT: only what ``spec`` knows is
    written). ``spec``: its preprocessing, names, licence and source. ``version``: default the installed
    cvt-models'. ``source``: used when ``spec`` names none.
    Labels are written as the names a prediction shows (:func:`cvt.core.labels.shown_names`), so a serving stack
    needs no other file; a model without a head (``num_classes == 0``) gets none.
    """
    meta = {"format_tag": FORMAT_TAG, "cvt_version": version or package_version()}
    if config is not None:
        meta["config"] = json.dumps(config.to_dict())
        meta["activation"] = config.activation
    if spec is not None:
        meta["preprocess"] = json.dumps(spec.preprocess.to_dict())
        if spec.license:
            meta["license"] = spec.license
    num_classes = config.num_classes if config is not None else len(spec.labels or ()) if spec is not None else 0
    if num_classes > 0:
        labels = spec.labels if spec is not None else None
        meta["labels"] = json.dumps(shown_names(labels, num_classes), ensure_ascii=False)
        fitting = labels.for_head(num_classes) if labels is not None else None
        if fitting is not None and fitting.source:
            meta["label_set"] = fitting.source
    chosen_source = (spec.source if spec is not None else "") or source
    if chosen_source:
        meta["source"] = chosen_source
    return meta


@dataclass(frozen=True)
class OnnxMetadata:
    """What :func:`decode_metadata` found; ``None`` for what the file does not say."""

    config: CvTConfig | None
    preprocess: EvalPreprocess | None
    labels: LabelSet | None
    activation: str | None
    version: str | None
    source: str = ""
    license: str = ""

    @property
    def ours(self) -> bool:
        """Written by cvt (``format_tag``)? A file only carrying some keys by hand is not."""
        return self.version is not None

    def spec(self, preprocess: EvalPreprocess) -> PretrainedSpec:
        """A :class:`PretrainedSpec` of this file with ``preprocess`` (the file's, or the caller's)."""
        return PretrainedSpec(preprocess, self.labels, license=self.license, source=self.source)


def decode_metadata(meta: Mapping[str, str], source: object = "model.onnx") -> OnnxMetadata:
    """Read :func:`encode_metadata`'s keys back (absent keys -> ``None``).

    Raises :class:`~cvt.core.errors.WeightsError` naming ``source`` and the key for a value that is present but
    unreadable (not JSON, an invalid preprocessing or configuration).
    """
    config = _json(meta, "config", source)
    pre = _json(meta, "preprocess", source)
    labels = _json(meta, "labels", source)
    try:
        return OnnxMetadata(
            config=CvTConfig.from_dict(config) if isinstance(config, Mapping) else None,
            preprocess=EvalPreprocess.from_dict(pre) if isinstance(pre, Mapping) else None,
            labels=_labels(labels, meta.get("label_set"), source),
            activation=meta.get("activation") or None,
            version=meta.get("cvt_version") if meta.get("format_tag") == FORMAT_TAG else None,
            source=str(meta.get("source") or ""),
            license=str(meta.get("license") or ""),
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: unreadable cvt metadata ({' '.join(str(e).split())})") from None


def missing(meta: OnnxMetadata, needed: tuple[str, ...] = ("preprocess",)) -> list[str]:
    """The metadata keys of ``needed`` the file lacks (``"preprocess"``, ``"labels"``, ``"config"``)."""
    return [key for key in needed if getattr(meta, key) is None]


def package_version() -> str:
    """The installed cvt-models version (read from the distribution: the core imports nothing above it)."""
    try:
        return importlib.metadata.version("cvt-models")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without an install
        return "unknown"


def _json(meta: Mapping[str, str], key: str, source: object) -> Any:
    text = meta.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{source}: metadata {key!r} is not JSON ({first_line(e)})") from None


def _labels(names: Any, label_set: str | None, source: object) -> LabelSet | None:
    if names is None:
        return LabelSet.named(label_set) if label_set else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{source}: metadata 'labels' must be a JSON list of class names")
    if label_set:  # the named set when the names are its own (files store the names for serving stacks)
        named = LabelSet.named(label_set)
        if tuple(names) == named.names:
            return named
    return LabelSet.parse(names)
