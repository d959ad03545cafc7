"""Train the Keras CvT on scikit-learn's digits: the PyTorch demo's model and split, with ``compile`` / ``fit``.

    KERAS_BACKEND=tensorflow python examples/keras_digits.py [--epochs 40] [--out digits_keras.safetensors]

The data: scikit-learn's 1,797 8x8 digits, grey levels scaled to 0..255, the same fixed stratified 20% held-out
split as ``cvt train`` (``cvt.data.sources.digits_split``, framework-free: the example needs no torch), prepared by
the official evaluation pipeline at 32 pixels (bicubic resize to 36, centre crop 32, ImageNet mean/std:
:class:`cvt.keras.CvTImagePreprocessor`); training adds random shifts of up to 3 pixels. The model: ``cvt-digits``
(1.7M parameters), AdamW 2e-3 with warm-up and cosine decay, weight decay 0.05 off norms / biases / cls token.
Prints held-out top-1 and the time, and saves the weights as native safetensors (``cvt predict --weights`` and
``cvt.create_model(weights=...)`` read them).
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import cvt.keras as ck
from cvt.core.spec import EvalPreprocess
from cvt.data.sources import digits_split


def rgb(images: np.ndarray) -> np.ndarray:
    """``(N, 8, 8)`` uint8 grey digits -> ``(N, 8, 8, 3)``, what the preprocessor takes."""
    return np.repeat(images[..., None], 3, axis=-1)


class Shifted(keras.utils.PyDataset):
    """Batches of ``(B, 32, 32, 3)`` prepared digits, each shifted by up to ``shift`` pixels (black fill)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shift: int, black: np.ndarray, seed: int = 0):
        super().__init__()
        self.x, self.y, self.batch_size, self.shift, self.black = x, y, batch_size, shift, black
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return int(np.ceil(len(self.x) / self.batch_size))

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        s = self.shift
        x = self.x[idx]
        padded = np.broadcast_to(self.black, (len(x), x.shape[1] + 2 * s, x.shape[2] + 2 * s, 3)).copy()
        padded[:, s:-s, s:-s] = x
        out = np.empty_like(x)
        for j, (dy, dx) in enumerate(self.rng.integers(0, 2 * s + 1, size=(len(x), 2))):
            out[j] = padded[j, dy : dy + x.shape[1], dx : dx + x.shape[2]]
        return out, self.y[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default="digits_keras.safetensors")
    args = ap.parse_args()
    keras.utils.set_random_seed(0)

    train, held_out = digits_split()
    ytr, yva = np.asarray(train.targets), np.asarray(held_out.targets)
    prep = ck.CvTImagePreprocessor(EvalPreprocess(img_size=32, crop_pct=0.875))
    xtr, xva = prep(rgb(train.images)), prep(rgb(held_out.images))  # (N, 32, 32, 3) float32
    black = prep(np.zeros((1, 8, 8, 3), np.uint8))[0, 0, 0]  # the prepared value of a black pixel

    model = ck.create_model("cvt-digits")
    steps = args.epochs * int(np.ceil(len(xtr) / args.batch_size))
    warmup = min(2, args.epochs - 1) * int(np.ceil(len(xtr) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-6, steps - warmup, alpha=1e-5 / args.lr, warmup_target=args.lr, warmup_steps=warmup
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.05)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias", "cls_token"])
    model.compile(optimizer=optimizer)

    t0 = time.perf_counter()
    model.fit(Shifted(xtr, ytr, args.batch_size, 3, black), epochs=args.epochs, verbose=2)
    train_s = time.perf_counter() - t0
    _, top1 = model.evaluate(xva, yva, batch_size=256, verbose=0)
    print(
        f"backend {keras.backend.backend()}: held-out top-1 {top1 * 100:.2f}% on {len(xva)} images "
        f"({len(xtr)} training), {args.epochs} epochs in {train_s:.0f} s"
    )
    ck.save_native(model, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
