"""Train the Flax CvT (``cvt-digits``, 1.7M parameters) on scikit-learn's 8x8 digits, without torch.

The same fixed, stratified 20% held-out split as the PyTorch demo (``cvt train``; 1,437 / 360 images), the
same recipe where it matters (32x32 inputs, AdamW lr 2e-3 at batch 64 with warm-up and cosine decay, weight
decay 0.05 with the core's no-decay rule, label smoothing 0.1, drop path 0.1 in the last stage) and a
simpler augmentation (random shifts of up to 3 pixels). Prints held-out top-1 and the time taken.

    python examples/flax_digits.py [--epochs 40] [--devices all] [--save cvt-digits-flax.safetensors]

``--devices all`` shards each batch over every JAX device (``XLA_FLAGS=--xla_force_host_platform_device_count=2``
makes two CPU devices). The saved file is our native safetensors: ``cvt.create_model(weights=...)`` loads it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from cvt.data.sources import digits_split  # the demo's split; framework-free (no torch)

IMG_SIZE = 32


def to_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 8, 8)`` -> NHWC float32 ``(N, 32, 32, 3)``: the eval preprocessing of a 32-pixel model."""
    from cvt.core.preprocess import EvalTransform
    from cvt.core.spec import EvalPreprocess

    transform = EvalTransform(EvalPreprocess.for_size(IMG_SIZE))  # bicubic resize 36, centre crop 32, ImageNet norm
    return np.stack([transform(Image.fromarray(im, "L")).transpose(1, 2, 0) for im in images])


def random_shift(batch: np.ndarray, rng: np.random.Generator, max_shift: int = 3) -> np.ndarray:
    """Shift each NHWC image by up to ``max_shift`` pixels each way, filling with its own corner value."""
    out = np.empty_like(batch)
    p = max_shift
    for i, img in enumerate(batch):
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge")
        dy, dx = rng.integers(0, 2 * p + 1, size=2)
        out[i] = padded[dy : dy + img.shape[0], dx : dx + img.shape[1]]
    return out


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", choices=["one", "all"], default="one")
    parser.add_argument("--save", default=None, help="write the trained model as native safetensors")
    args = parser.parse_args(argv)

    import jax
    import optax

    from cvt import flax as cf
    from cvt.flax import train as ft

    t0 = time.perf_counter()
    train, held_out = digits_split()
    xtr, ytr = to_inputs(train.images), np.asarray(train.targets)
    xva, yva = to_inputs(held_out.images), np.asarray(held_out.targets)
    model = cf.create_model("cvt-digits", seed=args.seed)
    steps_per_epoch = len(xtr) // args.batch_size
    total = args.epochs * steps_per_epoch
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(total // 10, 5 * steps_per_epoch), total)
    mesh = ft.data_mesh() if args.devices == "all" else None
    trainer = ft.Trainer(model, ft.make_optimizer(schedule, weight_decay=0.05), label_smoothing=0.1, mesh=mesh)
    rng = np.random.default_rng(args.seed)
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        loss = ft.fit_epoch(trainer, xtr, ytr, args.batch_size, rng, augment=random_shift)
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {loss:.4f}  ({time.perf_counter() - t_train:.0f} s)")
    train_s = time.perf_counter() - t_train
    n_eval = len(xva) - len(xva) % (mesh.devices.size if mesh is not None else 1)
    logits = np.asarray(trainer.logits(xva[:n_eval]))
    top1 = float((logits.argmax(-1) == yva[:n_eval]).mean())
    print(
        f"held-out top-1 {100 * top1:.2f}% on {n_eval} images; training {train_s:.0f} s "
        f"({args.epochs} epochs, {jax.device_count()} {jax.default_backend()} device(s)), "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    if args.save:
        cf.save(trainer.model(), args.save)
        print(f"saved {args.save}")
    return top1


if __name__ == "__main__":
    main()
