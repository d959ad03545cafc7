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

from .config import CvTConfig
from .errors import WeightsError
from .spec import EvalPreprocess, PretrainedSpec

FORMAT_TAG = "cvt-torch"


def encode_metadata(config: CvTConfig, spec: PretrainedSpec | None = None) -> dict[str, str]:
    """The safetensors metadata of a native file (strings only, as safetensors requires)."""
    meta = {"format": "pt", "format_tag": FORMAT_TAG, "config": json.dumps(config.to_dict())}
    if spec is not None:
        meta["spec"] = json.dumps(spec.to_dict())
    return meta


def is_native(meta: Mapping[str, Any]) -> bool:
    return meta.get("format_tag") == FORMAT_TAG and "config" in meta


def decode_metadata(meta: Mapping[str, Any], source: object = "file") -> tuple[CvTConfig, PretrainedSpec | None]:
    """``(config, spec)`` from native metadata (strings) or a native ``config.json`` (parsed)."""
    try:
        cfg = meta["config"]
        cfg = json.loads(cfg) if isinstance(cfg, str) else dict(cfg)
        spec_d = meta.get("spec")
        spec_d = json.loads(spec_d) if isinstance(spec_d, str) else spec_d
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{source}: unreadable cvt metadata ({e})") from None
    extra = cfg.pop("extra", None) or {}
    spec = PretrainedSpec.from_dict(spec_d) if isinstance(spec_d, Mapping) else None
    if spec is None and extra:  # written before 0.2
        pre = extra.get("preprocess")
        spec = PretrainedSpec(
            preprocess=EvalPreprocess.from_dict(pre)
            if isinstance(pre, Mapping)
            else EvalPreprocess.for_size(int(cfg.get("img_size", 224))),
            labels=extra.get("labels"),
        )
    return CvTConfig.from_dict(cfg), spec
