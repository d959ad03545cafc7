"""CvT in JAX: a Flax NNX model on the same weights as the PyTorch one, exact, jit-compiled, data-parallel.

>>> from cvt import flax as cvt_flax
>>> model = cvt_flax.create_model("cvt-13", weights="cvt-13.safetensors")   # eval mode
>>> logits = model(images_nhwc)                                             # (B, 1000)

Needs ``jax`` and ``flax`` (``pip install 'cvt-models[jax]'``); never imports torch (``.pth`` files are read
through torch only when it is installed). Modules: :mod:`.layers`, :mod:`.model` (``CvT``), :mod:`.weights`
(loading / saving), :mod:`.train` (optax train step, Orbax checkpoints, sharding), :mod:`.linen` (vit-flax style
``init`` / ``apply``).
"""

from __future__ import annotations

from ..core.errors import require

require("jax", "jax", "cvt.flax")
require("flax", "jax", "cvt.flax")

from .evaluate import evaluate  # noqa: E402
from .model import CvT, CvTStage, jit_forward  # noqa: E402
from .weights import create_model, from_pretrained, from_state_dict, save, state_dict  # noqa: E402

__all__ = [
    "CvT",
    "CvTStage",
    "create_model",
    "evaluate",
    "from_pretrained",
    "from_state_dict",
    "jit_forward",
    "save",
    "state_dict",
]
