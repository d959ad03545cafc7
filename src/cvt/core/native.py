"""Our native weight file: a ``.safetensors`` whose metadata carries the architecture and the spec.

Tensors use the PyTorch names (``stages.{i}.blocks.{j}...``); metadata keys: ``format_tag`` (``cvt-torch``),
``config`` (:class:`~cvt.core.config.CvTConfig` JSON) and ``spec`` (:class:`~cvt.core.spec.PretrainedSpec`
JSON). It is the one format every front-end reads and writes. Files written before ``spec`` existed kept
labels and preprocessing in ``config["extra"]``: :func:`decode_metadata` still reads them. Framework-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from . import bounds
from .config import CvTConfig
from .errors import ConfigError, CvtError, WeightsError, first_line
from .labels import check_label_count
from .spec import EvalPreprocess, PretrainedSpec

FORMAT_TAG = "cvt-torch"


def encode_metadata(config: CvTConfig, spec: PretrainedSpec | None = None) -> dict[str, str]:
    """The safetensors metadata of a native file (strings only, as safetensors requires)."""
    meta = {"format": "pt", "format_tag": FORMAT_TAG, "config": json.dumps(config.to_dict())}
    if spec is not None:
        if spec.labels is not None and config.num_classes:  # never write names that describe another head
            check_label_count(len(spec.labels), config.num_classes, "class names of the spec")
        meta["spec"] = json.dumps(spec.to_dict())
    return meta


def is_native(meta: Mapping[str, Any]) -> bool:
    return meta.get("format_tag") == FORMAT_TAG and "config" in meta


def decode_metadata(meta: Mapping[str, Any], source: object = "file") -> tuple[CvTConfig, PretrainedSpec | None]:
    """``(config, spec)`` from native metadata (strings) or a native ``config.json`` (parsed).

    Every problem is one :class:`WeightsError` line naming ``source`` and the field: JSON that is not an object
    (a list, a string), nested too deeply, fields of the wrong type or out of bounds (:mod:`cvt.core.bounds`).
    """
    cfg = _json_object(meta.get("config"), "config", source)
    spec_d = meta.get("spec")
    spec_d = None if spec_d is None else _json_object(spec_d, "spec", source)
    extra = cfg.pop("extra", None) or {}
    try:
        config = CvTConfig.from_dict(cfg)
    except ConfigError as e:
        raise WeightsError(f"{source}: metadata config: {e}") from None
    try:
        spec = PretrainedSpec.from_dict(spec_d) if spec_d is not None else None
        if spec is None and isinstance(extra, Mapping) and extra:  # written before 0.2
            pre = extra.get("preprocess")
            spec = PretrainedSpec(
                preprocess=EvalPreprocess.from_dict(pre)
                if isinstance(pre, Mapping)
                else EvalPreprocess.for_size(config.img_size),
                labels=extra.get("labels"),
            )
    except WeightsError:
        raise
    except (CvtError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise WeightsError(f"{source}: metadata spec: {first_line(e)}") from None
    if spec is not None:  # the size predict resizes every image to: bounded like the architecture's
        bounds.check(spec.preprocess.img_size, bounds.IMG_SIZE, f"{source}: metadata spec: img_size", WeightsError)
    return config, spec


def _json_object(value: Any, field: str, source: object) -> dict[str, Any]:
    """A metadata field as a JSON object (a dict): parsed when a string, refused in one line when anything else."""
    if isinstance(value, str):
        if len(value) > bounds.DOCUMENT_BYTES.maximum:
            raise WeightsError(f"{source}: metadata {field}: {len(value)} bytes ({bounds.DOCUMENT_BYTES.reason})")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise WeightsError(f"{source}: metadata {field}: not valid JSON ({e})") from None
        except RecursionError:
            raise WeightsError(f"{source}: metadata {field}: JSON nested too deeply") from None
    if not isinstance(value, Mapping):
        raise WeightsError(f"{source}: metadata {field}: expected a JSON object, got {type(value).__name__}")
    return dict(value)
