"""Our training augmentations: deterministic per generator, the shapes and statistics they promise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cvt.data.augment import (
    MixupCutmix,
    RandAugment,
    RandomErasing,
    RandomResizedCrop,
    TrainTransform,
    random_translate,
    soft_targets,
)
from cvt.data.transforms import to_tensor


def _photo(w: int = 64, h: int = 48) -> Image.Image:
    g = np.random.default_rng(0)
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_resized_crop_box_respects_scale_and_ratio():
    crop = RandomResizedCrop(32, scale=(0.3, 0.6), ratio=(0.5, 2.0))
    for s in range(50):
        x0, y0, x1, y1 = crop.box(64, 48, rng(s))
        w, h = x1 - x0, y1 - y0
        assert x0 >= 0 and x1 <= 64 and y0 >= 0 and y1 <= 48
        assert 0.3 * 64 * 48 - 1e-6 <= w * h <= 0.6 * 64 * 48 + 1e-6
        assert 0.5 - 1e-9 <= w / h <= 2.0 + 1e-9
    assert crop(_photo(), rng()).size == (32, 32)
    # impossible ratio: falls back to a centred crop of the whole image
    x0, y0, x1, y1 = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(4.0, 5.0)).box(10, 10, rng())
    assert (x1 - x0) / (y1 - y0) == pytest.approx(4.0)


def test_translate_shifts_whole_pixels_with_fill():
    img = Image.new("RGB", (10, 10), (255, 255, 255))
    out = random_translate(img, 0.3, rng(1), (0, 0, 0))
    arr = np.asarray(out)
    assert arr.shape == (10, 10, 3) and set(np.unique(arr)) <= {0, 255}


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m5-n3", "rand-m10-mstd0-p1.0"])
def test_randaugment_parses_timm_spelling_and_is_deterministic(spec):
    ra = RandAugment.from_string(spec)
    img = _photo()
    a, b = ra(img, rng(4)), ra(img, rng(4))
    assert a.size == img.size and np.array_equal(np.asarray(a), np.asarray(b))
    changed = sum(not np.array_equal(np.asarray(ra(img, rng(s))), np.asarray(img)) for s in range(20))
    assert changed >= 10  # two ops at p=0.5 each: most images change
    with pytest.raises(ValueError, match="not a RandAugment spec"):
        RandAugment.from_string("rand-q1")


def test_randaugment_refuses_what_it_does_not_implement():
    # inc0 would be timm's non-increasing ops: refused, not silently run as inc1
    with pytest.raises(ValueError, match="inc0 is not supported, only timm's increasing ops"):
        RandAugment.from_string("rand-m9-inc0")
    for spec in ("rand-n2.5", "rand-m9-x", "rnd-m9", "rand-m9-"):
        with pytest.raises(ValueError, match="not a RandAugment spec"):
            RandAugment.from_string(spec)
    ra = RandAugment.from_string("rand-m7-n3-mstd0-p1.0-inc1")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.prob) == (7.0, 3, 0.0, 1.0)


def test_random_erasing_replaces_one_box_with_noise():
    x = torch.zeros(3, 32, 32)
    out = RandomErasing(prob=1.0)(x.clone(), rng(2))
    changed = (out != 0).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
    area = changed.sum().item()
    assert 0.02 * 1024 * 0.5 <= area <= 1024 / 3 * 1.5
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box.item() == area  # one rectangle
    assert torch.equal(RandomErasing(prob=0.0)(x.clone(), rng(2)), x)


def test_train_transform_is_a_function_of_the_generator():
    tf = TrainTransform(
        24,
        (0.5,) * 3,
        (0.5,) * 3,
        scale=(0.5, 1.0),
        translate=0.1,
        hflip=0.5,
        randaugment="rand-m9-mstd0.5-inc1",
        random_erasing=0.25,
    )
    img = _photo()
    a, b, c = tf(img, rng(7)), tf(img, rng(7)), tf(img, rng(8))
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    white_black_grey = to_tensor(Image.new("RGB", (2, 2), (255, 0, 127)), (0.5,) * 3, (0.5,) * 3)[:, 0, 0]
    assert torch.allclose(white_black_grey, torch.tensor([1.0, -1.0, 127 / 255 * 2 - 1]))


def test_soft_targets_and_mixup():
    y = torch.tensor([0, 1, 2, 3])
    t = soft_targets(y, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(4)) and t[0, 0] == pytest.approx(0.925)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    xm, tm = mix(x, y, rng(0))
    lam = float(tm[0, 0])
    assert torch.allclose(xm[0], lam * x[0] + (1 - lam) * x[3]) and tm[0, 3] == pytest.approx(1 - lam)
    cut = MixupCutmix(4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for s in range(10):
        xc, tc = cut(x, y, rng(s))
        pasted = (xc[0] != x[0]).float().mean().item()  # share of image 0 covered by image 3
        assert tc[0, 3].item() == pytest.approx(pasted)  # lam corrected to the clipped box
        assert torch.allclose(tc.sum(1), torch.ones(4))
    assert not MixupCutmix(4, 0.0, 0.0).enabled
