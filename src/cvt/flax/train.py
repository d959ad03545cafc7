"""Training the Flax CvT: a jit-compiled optax step, data parallelism with ``jax.sharding``, Orbax checkpoints.

The step is one pure function of ``(TrainState, images, labels)`` compiled once with ``jax.jit`` (the model
is split into a static graph and arrays; no NNX graph walk per step). The optimizer is AdamW with the core's
no-decay rule (:func:`decay_mask`, as :func:`cvt.train.optim.param_groups`), the loss cross-entropy with
label smoothing (as ``torch.nn.functional.cross_entropy(label_smoothing=)``).

Data parallel (:class:`Trainer` with ``mesh=``): a one-axis mesh ``("data",)`` over the devices, the batch
sharded along it, parameters, BatchNorm statistics and optimizer state replicated. The step is the same
program as on one device: XLA partitions it, so BatchNorm's batch statistics and the loss are means over the
GLOBAL batch (no per-device statistics, no ``axis_name``), and two devices give the one-device step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from ..core.optim import decays
from .model import CvT
from .weights import native_name

Array = jax.Array


def _path_names(path: tuple[Any, ...]) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]


def decay_mask(params: Any) -> Any:
    """``True`` where AdamW decays: the core's rule (:func:`cvt.core.optim.decays`) on each parameter's native name.

    No decay, as in the official code: biases, LayerNorm / BatchNorm parameters (all 1-d) and the cls tokens.
    Depthwise convolution kernels ARE decayed. ``params``: the model's ``nnx.Param`` state.
    """

    def decays_here(path: tuple[Any, ...], value: Array) -> bool:
        # NOTE the path ends in the Variable's own field (an attribute key, e.g. ``.value``): not part of the name
        keys = tuple(k for k in path if not isinstance(k, jax.tree_util.GetAttrKey))
        return decays(native_name(tuple(_path_names(keys)), value.ndim), value.ndim)

    return jax.tree_util.tree_map_with_path(decays_here, params)


def make_optimizer(
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """AdamW as ``torch.optim.AdamW`` with :func:`cvt.train.optim.param_groups`' two groups (decoupled decay)."""
    return optax.adamw(learning_rate, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay, mask=decay_mask)


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """Mean cross-entropy of ``(B, K)`` logits and ``(B,)`` integer labels with label smoothing (PyTorch's)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: parameters, BatchNorm statistics + RNG streams (``rest``), optimizer state."""

    step: Array
    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``devices`` (default: all of them)."""
    devices = list(jax.devices()) if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


class Trainer:
    """A CvT, an optimizer and a compiled step. ``trainer.step(images, labels)`` -> ``{"loss": float}``.

    ``images``: NHWC ``(B, H, W, C)`` float; ``labels``: ``(B,)`` int. With ``mesh``, ``B`` must divide by
    the number of devices. :meth:`model` gives the current model (a copy, in eval mode) at any time.
    """

    def __init__(
        self,
        model: CvT,
        tx: optax.GradientTransformation,
        *,
        label_smoothing: float = 0.0,
        mesh: Mesh | None = None,
    ):
        model.train()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        model.eval()
        self.eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
        model.train()
        self.tx = tx
        self.label_smoothing = label_smoothing
        self.mesh = mesh
        state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
        if mesh is not None:
            self._replicated = NamedSharding(mesh, PartitionSpec())
            self._batch = NamedSharding(mesh, PartitionSpec("data"))
            self._step = jax.jit(self._train_step, donate_argnums=0, out_shardings=self._replicated)
        else:
            # NOTE: committed to one device, as an Orbax restore returns it, so a restored state runs the same
            # compiled step (an uncommitted state would compile it again, ~10 s for cvt-tiny on a CPU)
            self._replicated = SingleDeviceSharding(jax.devices()[0])
            self._step = jax.jit(self._train_step, donate_argnums=0)
        self.state = jax.device_put(state, self._replicated)
        self._logits = jax.jit(self._eval_logits)

    # ------------------------------------------------------------------ pure functions (traced once)
    def _train_step(self, state: TrainState, images: Array, labels: Array) -> tuple[TrainState, dict[str, Array]]:
        def loss_fn(params: nnx.State) -> tuple[Array, nnx.State]:
            # NOTE: BatchNorm mutates ``rest``; NNX refuses to mutate variables of an outer trace, so give the
            # grad trace its own copies (tree.map rebuilds the variables; the arrays are not copied).
            model = nnx.merge(self.graphdef, params, jax.tree.map(lambda a: a, state.rest))
            loss = cross_entropy(model(images), labels, self.label_smoothing)
            return loss, nnx.state(model, nnx.Not(nnx.Param))  # updated BatchNorm statistics and RNG counts

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, rest, opt_state), {"loss": loss}

    def _eval_logits(self, state: TrainState, images: Array) -> Array:
        return nnx.merge(self.eval_graphdef, state.params, state.rest)(images)

    # ------------------------------------------------------------------ API
    def _put(self, batch: Any) -> Array:
        batch = jnp.asarray(batch)
        if self.mesh is None:
            return batch
        devices = self.mesh.devices.size
        if batch.shape[0] % devices:
            raise ValueError(f"batch of {batch.shape[0]} does not split over {devices} devices")
        return jax.device_put(batch, self._batch)

    def step(self, images: Any, labels: Any) -> dict[str, float]:
        """One optimizer step on a batch; returns the batch's mean loss (before the update)."""
        self.state, metrics = self._step(self.state, self._put(images), self._put(labels))
        return {k: float(v) for k, v in metrics.items()}

    def logits(self, images: Any) -> Array:
        """Eval-mode logits of the current parameters (running BatchNorm statistics, no dropout)."""
        return self._logits(self.state, self._put(images))

    def model(self) -> CvT:
        """The current model, in eval mode (its own copy of the arrays)."""
        model = nnx.merge(self.eval_graphdef, jax.device_get(self.state.params), jax.device_get(self.state.rest))
        return model

    # ------------------------------------------------------------------ Orbax checkpoints
    def save_checkpoint(self, directory: str | os.PathLike[str]) -> Path:
        """Write the whole training state (parameters, statistics, optimizer, step) as an Orbax checkpoint."""
        import orbax.checkpoint as ocp

        path = Path(directory).absolute()
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path, _to_saveable(self.state), force=True)
        return path

    def restore_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Read a checkpoint written by :meth:`save_checkpoint` for the same model and optimizer."""
        import orbax.checkpoint as ocp

        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(self.state))
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(Path(directory).absolute(), target)
        self.state = jax.device_put(_from_saveable(restored, self.state), self._replicated)  # as in __init__


def _to_saveable(state: TrainState) -> Any:
    """Typed PRNG keys as their raw ``uint32`` data (what Orbax stores)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _from_saveable(saved: Any, like: TrainState) -> TrainState:
    def unwrap(stored: Any, ref: Any) -> Any:
        return jax.random.wrap_key_data(stored, impl=jax.random.key_impl(ref)) if _is_key(ref) else stored

    return jax.tree.map(unwrap, saved, like)


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def fit_epoch(
    trainer: Trainer,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> float:
    """One pass over ``images`` in shuffled full batches (the last partial one dropped); the mean loss."""
    order = rng.permutation(len(images))
    losses = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        batch = images[idx] if augment is None else augment(images[idx], rng)
        losses.append(trainer.step(batch, labels[idx])["loss"])
    return float(np.mean(losses))
