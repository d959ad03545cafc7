"""Reading the keras-hub-style presets ``cvt.keras`` writes, without Keras: h5py + numpy only.

A preset directory (keras-hub's layout, written by ``CvTBackbone.save_to_preset`` /
``CvTImageClassifier.save_to_preset``):

======================  ===============================================================================
``config.json``         the serialized backbone: ``{"registered_name": "cvt>CvTBackbone", "config":
                        {"config": <CvTConfig dict>, "data_format": ..., ...}}``
``metadata.json``       keras and cvt versions, parameter count, date saved, ``tasks``
``model.weights.h5``    the backbone's variables, by Keras' own ``save_weights``
``task.json``           (classifier) the serialized ``cvt>CvTImageClassifier`` (head size, pooling, spec)
``task.weights.h5``     (classifier) the variables outside the backbone: final ``norm`` and ``head``
``preprocessor.json``   (classifier) the serialized ``cvt>CvTImagePreprocessor``: the ``PretrainedSpec``
======================  ===============================================================================

Keras' ``.weights.h5`` holds every layer's own variables as ``<group path>/vars/<i>``, the group path being the
attribute path Keras walked (lists by class name: ``layers/cv_t_stage_1/blocks/block_1/attn/conv_proj_q/bn``),
and each ``vars`` group records its layer's ``name`` (``stage1``, ``blocks_1``, ``attn``, ``conv_proj_q``,
``bn``). :func:`read_weights_h5` turns that into our native names by the rule :mod:`cvt.keras.weights` derives
Keras' variables with (the layers carry the official attribute names): a stage's name ``stage{i}`` is
``stages.{i}``, a block's ``blocks_{j}`` is ``blocks.{j}``, a layer that is itself a functional model (it holds
``layers/``) adds nothing, every other layer adds its name; leaves by position: BatchNorm ``weight, bias,
running_mean, running_var, num_batches_tracked``, a stage's own variable ``cls_token``, every other layer
``weight`` (Keras' ``kernel`` / ``gamma``), ``bias``. Kernels change layout by the core's one table
(:mod:`cvt.core.layouts`). Files written before Keras recorded layer names fall back on the group names
(``cv_t_stage_N``, ``block_N``, ``layer_normalization``, ``dense``).

:func:`read_preset` gives native arrays plus the preset's :class:`~cvt.core.config.CvTConfig` and
:class:`~cvt.core.spec.PretrainedSpec`; :func:`cvt.core.weights.read_raw` hooks it in, so a preset directory is a
weight source for PyTorch, Keras and Flax alike. Framework-free (h5py is imported when a file is read).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import bounds
from .config import CvTConfig
from .errors import CvtError, WeightsError, first_line, require
from .layouts import to_torch
from .spec import PretrainedSpec
from .tfport import check_h5

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
TASK_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
PREPROCESSOR_FILE = "preprocessor.json"
PACKAGE = "cvt"  # keras.saving.register_keras_serializable(package=...): registered names are "cvt>Class"
BACKBONE_NAME = f"{PACKAGE}>CvTBackbone"
CLASSIFIER_NAME = f"{PACKAGE}>CvTImageClassifier"
PREPROCESSOR_NAME = f"{PACKAGE}>CvTImagePreprocessor"

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STAGE = re.compile(r"^(?:stage|cv_t_stage_?)(\d*)$")  # layer name stage{i}; group name cv_t_stage[_i]
_BLOCK = re.compile(r"^(?:blocks_|block_?)(\d*)$")  # layer name blocks_{j}; group name block[_j]
_GROUP_NAMES = {"layer_normalization": "norm", "dense": "head"}  # the classifier's layers by class name


def _load_json(path: Path) -> dict[str, Any]:
    from .weights import read_json_object  # (cvt.core.weights reads presets through this module)

    return read_json_object(path)


def is_preset(directory: Path) -> bool:
    """Whether ``directory`` is a preset written by ``cvt.keras`` (``config.json`` naming a ``cvt>`` class and a
    ``model.weights.h5``); cheap: reads one small JSON file."""
    config = directory / CONFIG_FILE
    if not (config.is_file() and (directory / MODEL_WEIGHTS_FILE).is_file()):
        return False
    try:
        d = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(d, dict) and str(d.get("registered_name", "")).startswith(f"{PACKAGE}>")


def preset_dir_of(weight_file: Path) -> Path | None:
    """The preset directory a ``model.weights.h5`` / ``task.weights.h5`` file belongs to, or ``None``."""
    if weight_file.name in (MODEL_WEIGHTS_FILE, TASK_WEIGHTS_FILE) and is_preset(weight_file.parent):
        return weight_file.parent
    return None


# ---------------------------------------------------------------------------- h5 paths -> native names
def _segment(name: str, group: str) -> str | None:
    """The native path segment a layer adds (``None``: nothing), from its recorded ``name`` or its group name."""
    for text in (name, group):
        stage = _STAGE.match(text)
        if stage:
            return f"stages.{int(stage[1] or 0)}"
        block = _BLOCK.match(text)
        if block:
            return f"blocks.{int(block[1] or 0)}"
    return name if name != group or group not in _GROUP_NAMES else _GROUP_NAMES[group]


def _array(ds: Any) -> np.ndarray:
    """A dataset as numpy; Keras writes bfloat16 as raw 2-byte values tagged ``dtype=bfloat16``: widened to
    float32 exactly (the high half of a float32)."""
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        raw = np.asarray(ds[()]).view(np.uint16).astype(np.uint32) << 16
        return raw.view(np.float32)
    return np.asarray(ds[()])


def _leaves(prefix: str, layer: str) -> tuple[str, ...]:
    if layer == "bn":
        return _BN_LEAVES
    if re.fullmatch(r"stages\.\d+", prefix.rstrip(".")):
        return ("cls_token",)
    return ("weight", "bias")


def _kind(name: str, ndim: int) -> str:
    """The layout kind (:mod:`cvt.core.layouts`) of a Keras variable stored under native ``name``."""
    if not name.endswith(".weight"):
        return "same"
    if ndim == 4:
        return "depthwise" if name.endswith(".conv.weight") else "conv"
    return "dense" if ndim == 2 else "same"


def _walk(group: Any, prefix: str, out: dict[str, np.ndarray], top: bool) -> None:
    """Fill ``out`` with the native arrays below an h5 group (module docstring for the rule)."""
    vars_group = group.get("vars")
    is_layer = vars_group is not None and hasattr(vars_group, "attrs")
    own = prefix
    if is_layer and not top and "layers" not in group:  # a functional model inside adds no segment
        recorded = vars_group.attrs.get("name", "")
        recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
        base = group.name.rsplit("/", 1)[-1]
        seg = _segment(recorded or base, base)
        own = f"{prefix}{seg}." if seg else prefix
    if is_layer and len(vars_group):
        names = _leaves(own, own.rstrip(".").rsplit(".", 1)[-1])
        keys = sorted(vars_group, key=int)
        if len(keys) > len(names):
            raise WeightsError(f"{group.name}: {len(keys)} variables, a cvt layer here has at most {len(names)}")
        for key, leaf in zip(keys, names):
            arr = _array(vars_group[key])
            name = own + leaf
            if leaf == "num_batches_tracked":
                arr = arr.astype(np.int64)  # PyTorch's dtype; Keras keeps int32
            out[name] = to_torch(_kind(name, arr.ndim), arr)
    for child in group:
        if child != "vars" and hasattr(group[child], "keys"):
            _walk(group[child], own, out, top=False)


def read_weights_h5(path: Path) -> dict[str, np.ndarray]:
    """A Keras 3 ``.weights.h5`` of a ``cvt.keras`` model (backbone, classifier, or a task's own variables) ->
    ``{native name: array}`` in PyTorch layouts. Raises :class:`WeightsError` (one line) for an unreadable file."""
    require("h5py", "keras", "reading a Keras preset")
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            check_h5(f, path, kinds="fiu")  # bounded before anything is read (int: Keras's BatchNorm counters)
            _walk(f, "", out, top=True)
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: not a readable Keras weights file ({first_line(e)})") from None
    if not out:
        raise WeightsError(f"{path}: holds no variables of a cvt.keras model")
    return out


# ---------------------------------------------------------------------------- the preset directory
def _registered(d: Mapping[str, Any], want: str, path: Path) -> dict[str, Any]:
    if d.get("registered_name") != want or not isinstance(d.get("config"), Mapping):
        raise WeightsError(f"{path}: expected a serialized {want}, found {d.get('registered_name')!r}")
    return dict(d["config"])


def read_preset_config(directory: Path) -> tuple[CvTConfig, PretrainedSpec | None, dict[str, Any]]:
    """``(architecture with the task's head size, spec, settings)`` of a preset, without reading weights.

    ``settings``: what the Keras front-end restores besides the weights: ``data_format``, ``image_shape`` (the
    backbone's), ``pooling``, ``activation`` (the classifier's), ``task`` (whether a classifier was saved).
    """
    config_json = directory / CONFIG_FILE
    backbone = _registered(_load_json(config_json), BACKBONE_NAME, config_json)
    try:
        config = CvTConfig.from_dict(backbone["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{config_json}: unusable CvT config ({first_line(e)})") from None
    settings: dict[str, Any] = {
        "data_format": backbone.get("data_format"),
        "image_shape": backbone.get("image_shape"),
        "task": False,
    }
    spec = None
    task_json = directory / TASK_FILE
    if task_json.is_file():
        task = _registered(_load_json(task_json), CLASSIFIER_NAME, task_json)
        settings.update(task=True, pooling=task.get("pooling"), activation=task.get("activation"))
        try:  # the field's JSON type and bounds: CvTConfig's own rules (cvt.core.bounds)
            config = config.replace(num_classes=task.get("num_classes") or 0)
            if isinstance(task.get("pretrained_cfg"), Mapping):
                spec = PretrainedSpec.from_dict(task["pretrained_cfg"])
        except (CvtError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{task_json}: unusable classifier config ({first_line(e)})") from None
    else:
        config = config.replace(num_classes=0)  # a backbone: no head
    pre_json = directory / PREPROCESSOR_FILE
    if pre_json.is_file():
        pre = _registered(_load_json(pre_json), PREPROCESSOR_NAME, pre_json)
        if isinstance(pre.get("spec"), Mapping):
            try:
                spec = PretrainedSpec.from_dict(pre["spec"])
            except (CvtError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise WeightsError(f"{pre_json}: unusable preprocessing spec ({first_line(e)})") from None
    if spec is not None:  # the size every image is resized to: bounded like the architecture's
        bounds.check(spec.preprocess.img_size, bounds.IMG_SIZE, f"{directory}: spec img_size", WeightsError)
    return config, spec, settings


def read_preset(directory: Path) -> tuple[dict[str, np.ndarray], CvTConfig, PretrainedSpec | None, Path]:
    """``(native arrays, config, spec, backbone weight file)`` of a preset directory: the backbone's variables from
    ``model.weights.h5`` plus, for a classifier, ``norm`` and ``head`` from ``task.weights.h5``."""
    config, spec, settings = read_preset_config(directory)
    weight_file = directory / MODEL_WEIGHTS_FILE
    arrays = read_weights_h5(weight_file)
    stray = sorted(k for k in arrays if not k.startswith("stages."))
    if stray:
        raise WeightsError(f"{weight_file}: holds {stray[0]}, not a cvt backbone variable")
    task_weights = directory / TASK_WEIGHTS_FILE
    if settings["task"] and task_weights.is_file():
        arrays.update(read_weights_h5(task_weights))
    return arrays, config, spec, weight_file


def metadata(keras_version: str | None, cvt_version: str, parameter_count: int, tasks: list[str]) -> dict[str, Any]:
    """``metadata.json``'s content, keras-hub's keys (plus ``cvt_version``)."""
    import datetime

    return {
        "keras_version": keras_version,
        "cvt_version": cvt_version,
        "parameter_count": int(parameter_count),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": sorted(set(tasks)),
    }
