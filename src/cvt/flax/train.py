"""Training the Flax CvT: a jit-compiled optax step, data parallelism with ``jax.sharding``, Orbax checkpoints.

The step is one pure function of ``(TrainState, images, labels)`` compiled once with ``jax.jit`` (the model
is split into a static graph and arrays; no NNX graph walk per step). The optimizer is AdamW with the core's
no-decay rule (:func:`decay_mask`, as :func:`cvt.train.optim.param_groups`), the loss cross-entropy with
label smoothing (as ``torch.nn.functional.cross_entropy(label_smoothing=)``).

Data parallel (:class:`Trainer` with ``mesh=``): a one-axis mesh ``("data",)`` over the devices, the batch
sharded along it, parameters, BatchNorm statistics and optimizer state replicated. The step is the same
program as on one device: XLA partitions it, so BatchNorm's batch statistics and the loss are means over the
GLOBAL batch (no per-device statistics, no ``axis_name``), and two devices give the one-device step.

Ownership: a :class:`Trainer` works on its own copy of the model's arrays (the step donates its state, and
arrays shared with the user's model would be deleted under it): the model passed in stays usable and keeps its
initial weights; :meth:`Trainer.model` gives the trained one. Labels are checked on the host before each step
(integers in ``[0, num_classes)``): a label the one-hot would silently zero is one line, not a finite loss.
Checkpoints never replace what is not an Orbax checkpoint (:data:`cvt.core.files.ORBAX_CHECKPOINT`), and
replacing one is explicit (``overwrite=True``); an unreadable one is one line naming the directory.
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

from ..core.errors import CvtError, DataError, WriteError, first_line
from ..core.files import ORBAX_CHECKPOINT, atomic_write_dir
from ..core.labels import check_class_indices
from ..core.optim import decays
from .model import CvT
from .weights import native_name

Array = jax.Array


class CheckpointError(CvtError, ValueError):
    """An Orbax checkpoint that cannot be restored (one line naming the directory)."""


def check_labels(labels: Any, num_classes: int, batch: int) -> None:
    """Refuse labels a step would silently misuse: ``(batch,)`` integers in ``[0, num_classes)`` (one-hot turns an
    out-of-range index into an all-zero target and a float is truncated, both giving a finite, wrong loss)."""
    y = np.asarray(labels)
    if y.shape != (batch,):
        raise DataError(f"labels: shape {y.shape}, expected ({batch},) class indices for a batch of {batch}")
    check_class_indices(y, num_classes)


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

    ``images``: NHWC ``(B, H, W, C)`` float; ``labels``: ``(B,)`` int in ``[0, num_classes)`` (else
    :class:`~cvt.core.errors.DataError`). With ``mesh``, ``B`` must divide by the number of devices.
    :meth:`model` gives the current model (a copy, in eval mode) at any time; the ``model`` passed in is not
    changed by training (the trainer copies its arrays) and is left in train mode.
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
        self.num_classes = int(model.config.num_classes)
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        # own copies: the step donates its state, which would delete the arrays the user's model still holds
        params, rest = jax.tree.map(_copy, params), jax.tree.map(_copy, rest)
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
        check_labels(labels, self.num_classes, int(np.shape(images)[0]) if np.ndim(images) else -1)
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
    def save_checkpoint(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the whole training state (parameters, statistics, optimizer, step) as an Orbax checkpoint.

        Written beside ``directory`` and swapped into place (:func:`cvt.core.files.atomic_write_dir`): a new or
        empty directory is filled; an existing checkpoint is replaced only with ``overwrite=True``; any other
        non-empty directory is refused (:class:`~cvt.core.errors.WriteError`, one line), nothing deleted.
        """
        import orbax.checkpoint as ocp

        path = Path(directory).absolute()
        if path.is_dir() and ORBAX_CHECKPOINT.recognise(path) and not overwrite:
            raise WriteError(f"{directory}: already holds an Orbax checkpoint (pass overwrite=True to replace it)")
        state = _to_saveable(self.state)

        def write(tmp: Path) -> None:
            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(tmp, state, force=True)  # tmp: the fresh directory atomic_write_dir made

        atomic_write_dir(path, write, kind=ORBAX_CHECKPOINT, whole=True)
        return path

    def restore_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Read a checkpoint written by :meth:`save_checkpoint` for the same model and optimizer.

        Raises :class:`CheckpointError` (one line naming ``directory``) for a missing, empty, foreign, truncated
        or mismatched checkpoint; the trainer's state is unchanged then."""
        import orbax.checkpoint as ocp

        path = Path(directory).absolute()
        if not path.is_dir():
            raise CheckpointError(f"{directory}: not a directory (an Orbax checkpoint is one)")
        if not ORBAX_CHECKPOINT.recognise(path):
            raise CheckpointError(f"{directory}: not an Orbax checkpoint (no _CHECKPOINT_METADATA)")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(self.state))
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                restored = checkpointer.restore(path, target)
        except Exception as e:  # Orbax / TensorStore errors run to kilobytes: one line, the type and its start
            raise CheckpointError(
                f"{directory}: not a readable checkpoint of this model and optimizer "
                f"({type(e).__name__}: {first_line(e, 120)})"
            ) from None
        self.state = jax.device_put(_from_saveable(restored, self.state), self._replicated)  # as in __init__


def _copy(leaf: Any) -> Any:
    """A fresh copy of an array leaf (typed PRNG keys through their raw data)."""
    if _is_key(leaf):
        return jax.random.wrap_key_data(jnp.copy(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
    return jnp.copy(leaf) if isinstance(leaf, jax.Array) else leaf


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
