"""Shared fixtures: tiny configs, a randomised HF peer, seeding. No test touches the network."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here may download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm statistics/affines and LayerNorm affines non-default values so mapping mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model


TINY_HF = dict(
    embed_dim=[16, 32, 48],
    num_heads=[1, 2, 3],
    depth=[1, 2, 3],  # HF indexes per-block drop-path rates by stage: depth must exceed the stage index
    num_labels=10,
)


def hf_model(**kwargs):
    """A random ``transformers.CvtForImageClassification`` in eval mode with randomised norms."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CvtConfig(**kwargs)
    return randomize_norms(transformers.CvtForImageClassification(cfg)).eval()


@pytest.fixture(scope="session")
def hf_cvt13_dir(tmp_path_factory):
    """A random HF cvt-13 (1000 classes, randomised norms) saved with ``save_pretrained``."""
    torch.manual_seed(1)
    model = hf_model(num_labels=1000)
    path = tmp_path_factory.mktemp("hf_cvt13")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    torch.manual_seed(2)
    model = hf_model(**TINY_HF)
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return path, model


# ---------------------------------------------------------------------------- training (test_train, test_distributed)
# A few-thousand-parameter CvT on 16x16 digits: a run of a few epochs takes a second or two.
TINY_SPEC = {
    "name": "tiny-test",
    "stages": [
        {"embed_dim": 8, "depth": 1, "num_heads": 1, "patch_size": 3, "patch_stride": 2, "patch_padding": 1},
        {"embed_dim": 16, "depth": 1, "num_heads": 2},
        {"embed_dim": 16, "depth": 1, "num_heads": 2, "cls_token": True, "drop_path_rate": 0.1},
    ],
}


def tiny_recipe(out, **sections) -> dict:
    """A training recipe (a mapping) for TINY_SPEC on 128 / 64 digits, 3 epochs; ``sections`` update it."""
    r = {
        "model": {"name": None, "spec": TINY_SPEC},
        "data": {
            "img_size": 16,
            "batch_size": 16,
            "eval_batch_size": 64,
            "max_train_samples": 128,
            "max_val_samples": 64,
        },
        "optim": {"lr": 3e-3, "lr_batch": 16},
        "schedule": {"epochs": 3, "warmup_epochs": 1},
        "run": {"out": str(out), "threads": 1, "progress": False, "plots": False, "baseline": False},
    }
    for section, values in sections.items():
        r.setdefault(section, {}).update(values)
    return r


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[bool]:
    """Make the directory ``path`` unwritable for this process: mode 0o555, and the immutable flag when running as
    root (root ignores mode bits, not that flag). Yields whether writing into it now fails; restores it after."""
    os.chmod(path, 0o555)
    immutable = os.geteuid() == 0 and _chattr("+i", path)
    try:
        yield not os.access(path, os.W_OK)
    finally:
        if immutable:
            _chattr("-i", path)
        os.chmod(path, 0o755)


def _chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def temp_files(root: Path) -> list[Path]:
    """The temporary files and directories of interrupted writes (``.NAME.XXXX.tmp...``) anywhere under ``root``."""
    return sorted(p for p in root.rglob(".*") if ".tmp" in p.name and not p.is_symlink())


def tree_fingerprint(root: Path) -> dict[str, tuple]:
    """Kind and content of everything under ``root``: 'unchanged' means equal fingerprints."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        out[str(p)] = (stat.S_IFMT(st.st_mode), p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


def path_state(path: Path) -> object:
    """A directory's listing (hidden temporary files included), a file's bytes, or None when absent."""
    if path.is_dir():
        return sorted(os.listdir(path))
    return path.read_bytes() if path.exists() else None
