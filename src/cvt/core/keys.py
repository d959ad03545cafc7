"""State-dict key conversion between the three CvT layouts, as data.

* ``native``: this library (``stages.{i}.blocks.{j}.attn.conv_proj_q.conv.weight`` ...);
* ``official``: microsoft/CvT (``stage{i}.blocks.{j}...``), i.e. native with ``stages.{i}`` -> ``stage{i}``;
* ``hf``: transformers ``CvtForImageClassification`` (``cvt.encoder.stages.{i}.layers.{j}.attention...``).

Every mapping is one table of ``(native, foreign)`` prefix templates read in both directions, so a round
trip is the identity by construction (and tested). A key no rule matches is an error, never silently dropped.
Pure functions on ``name -> array`` mappings of any framework (torch tensors, numpy arrays): framework-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from .errors import ConversionError

FORMATS = ("native", "official", "hf")

V = TypeVar("V")

_HF_LAYER = "cvt.encoder.stages.{i}.layers.{j}."
_HF_ATTN = _HF_LAYER + "attention.attention."
_NATIVE_BLOCK = "stages.{i}.blocks.{j}."

# (native prefix, HF prefix); the rest of the key (".weight", ".running_mean", ...) is carried over.
HF_RULES: list[tuple[str, str]] = [
    ("stages.{i}.patch_embed.proj.", "cvt.encoder.stages.{i}.embedding.convolution_embeddings.projection."),
    ("stages.{i}.patch_embed.norm.", "cvt.encoder.stages.{i}.embedding.convolution_embeddings.normalization."),
    ("stages.{i}.cls_token", "cvt.encoder.stages.{i}.cls_token"),
    *[
        rule
        for short, long in (("q", "query"), ("k", "key"), ("v", "value"))
        for rule in (
            (
                _NATIVE_BLOCK + f"attn.conv_proj_{short}.conv.",
                _HF_ATTN + f"convolution_projection_{long}.convolution_projection.convolution.",
            ),
            (
                _NATIVE_BLOCK + f"attn.conv_proj_{short}.bn.",
                _HF_ATTN + f"convolution_projection_{long}.convolution_projection.normalization.",
            ),
            (_NATIVE_BLOCK + f"attn.proj_{short}.", _HF_ATTN + f"projection_{long}."),
        )
    ],
    (_NATIVE_BLOCK + "attn.proj.", _HF_LAYER + "attention.output.dense."),
    (_NATIVE_BLOCK + "mlp.fc1.", _HF_LAYER + "intermediate.dense."),
    (_NATIVE_BLOCK + "mlp.fc2.", _HF_LAYER + "output.dense."),
    (_NATIVE_BLOCK + "norm1.", _HF_LAYER + "layernorm_before."),
    (_NATIVE_BLOCK + "norm2.", _HF_LAYER + "layernorm_after."),
    ("norm.", "layernorm."),
    ("head.", "classifier."),
]

OFFICIAL_RULES: list[tuple[str, str]] = [
    ("stages.{i}.", "stage{i}."),
    ("norm.", "norm."),
    ("head.", "head."),
]


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + pattern)


def _compiled(rules: list[tuple[str, str]], reverse: bool) -> list[tuple[re.Pattern[str], str]]:
    return [(_compile(dst if reverse else src), src if reverse else dst) for src, dst in rules]


_TABLES = {
    ("native", "hf"): _compiled(HF_RULES, reverse=False),
    ("hf", "native"): _compiled(HF_RULES, reverse=True),
    ("native", "official"): _compiled(OFFICIAL_RULES, reverse=False),
    ("official", "native"): _compiled(OFFICIAL_RULES, reverse=True),
}


def rename_key(key: str, src: str, dst: str) -> str:
    """Map one key from layout ``src`` to ``dst``; raises :class:`ConversionError` when no rule applies."""
    if src == dst:
        return key
    if src != "native" and dst != "native":
        return rename_key(rename_key(key, src, "native"), "native", dst)
    for pattern, template in _TABLES[(src, dst)]:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict()) + key[m.end() :]
    raise ConversionError(f"no {src}->{dst} rule for key {key!r}")


def convert_state_dict(sd: Mapping[str, V], src: str, dst: str) -> dict[str, V]:
    """Rename every key of ``sd`` from layout ``src`` to ``dst`` (values untouched, order kept)."""
    for f in (src, dst):
        if f not in FORMATS:
            raise ConversionError(f"unknown layout {f!r} (use one of {FORMATS})")
    bad, out = [], {}
    for k, v in sd.items():
        try:
            out[rename_key(k, src, dst)] = v
        except ConversionError:
            bad.append(k)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConversionError(f"{len(bad)} key(s) are not part of a {src} CvT state dict: {shown}")
    return out


_PREFIXES_TO_STRIP = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def strip_wrappers(sd: Mapping[str, V]) -> dict[str, V]:
    """Drop the ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes that training wrappers add."""
    out = dict(sd)
    for prefix in _PREFIXES_TO_STRIP:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def detect_format(keys: list[str] | Mapping[str, object]) -> str:
    """``"native"``, ``"official"`` or ``"hf"`` from the key names; :class:`ConversionError` otherwise.

    HF ``CvtModel`` (backbone without head, keys ``encoder.stages...``) is reported as ``"hf"`` after
    :func:`normalize_hf` adds the ``cvt.`` prefix.
    """
    keys = list(keys)
    if any(re.match(r"^cvt\.encoder\.stages\.\d+\.", k) for k in keys):
        return "hf"
    if any(re.match(r"^stage\d+\.", k) for k in keys):
        return "official"
    if any(re.match(r"^stages\.\d+\.(patch_embed|blocks|cls_token)", k) for k in keys):
        return "native"
    shown = ", ".join(keys[:3]) if keys else "no keys at all"
    raise ConversionError(f"not a CvT state dict (keys start with: {shown})")


def normalize_hf(sd: Mapping[str, V]) -> dict[str, V]:
    """Give an HF ``CvtModel`` (backbone) state dict the ``cvt.`` prefix of ``CvtForImageClassification``."""
    if any(k.startswith("encoder.stages.") for k in sd) and not any(k.startswith("cvt.") for k in sd):
        return {("cvt." + k if k.startswith("encoder.") else k): v for k, v in sd.items()}
    return dict(sd)


def to_native(sd: Mapping[str, V]) -> tuple[dict[str, V], str]:
    """Detect the layout of ``sd`` and return ``(native_state_dict, detected_layout)``."""
    sd = normalize_hf(strip_wrappers(sd))
    fmt = detect_format(sd)
    return convert_state_dict(sd, fmt, "native"), fmt
