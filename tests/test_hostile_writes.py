"""Issue 17, writers and trainers: never replace what cvt did not write, suffixes that name another format,
training labels in range, a trainer that leaves the user's model alive, Orbax errors in one line.

Rows in the style of ``tests/test_hostile.py``: bounded time, exit status, ONE stderr line naming the file or
argument, no traceback, the user's files unchanged. Flax rows run in-process (marker ``flax``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cvt
from conftest import temp_files
from cvt.cli import main
from cvt.core import files, native
from cvt.core.errors import WriteError
from cvt.torch.weights import save_hf, save_native, save_official, save_pretrained

LIMIT_S = 60


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, cvt.CvTConfig]:
    w = tmp_path_factory.mktemp("writes")
    torch.manual_seed(0)
    cfg = cvt.core.get_config("cvt-tiny").replace(num_classes=3)
    sd = cvt.CvT(cfg).eval().state_dict()
    save_native(sd, cfg, w / "tiny.safetensors")
    return w / "tiny.safetensors", sd, cfg


def _user_dir(path: Path) -> dict[str, str]:
    """A directory of the user's: a config.json of another project, and notes."""
    path.mkdir(parents=True)
    mine = {"config.json": '{"project": "mine"}\n', "notes.txt": "mine\n"}
    for name, text in mine.items():
        (path / name).write_text(text)
    return mine


def _unchanged(path: Path, mine: dict[str, str]) -> bool:
    return sorted(os.listdir(path)) == sorted(mine) and all((path / n).read_text() == t for n, t in mine.items())


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(argv)
    assert time.perf_counter() - t0 < LIMIT_S
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return code, [x for x in err.splitlines() if x.strip()]


# ---------------------------------------------------------------------------- class 1: never replace the user's
@pytest.mark.parametrize("to", ["native", "hf"])
def test_convert_force_never_replaces_a_users_directory(tiny, tmp_path, capsys, to):
    src, *_ = tiny
    mine = _user_dir(tmp_path / "proj")
    code, lines = _cli(["convert", str(src), str(tmp_path / "proj"), "--to", to, "--force"], capsys)
    assert code == 1 and len(lines) == 1 and "proj" in lines[0] and "config.json" in lines[0], lines
    assert _unchanged(tmp_path / "proj", mine) and not temp_files(tmp_path)


@pytest.mark.parametrize("writer", ["save_native", "save_hf", "save_pretrained"])
def test_python_writers_refuse_a_users_config_json(tiny, tmp_path, writer):
    _, sd, cfg = tiny
    mine = _user_dir(tmp_path / "proj")
    call = {
        "save_native": lambda: save_native(sd, cfg, tmp_path / "proj"),
        "save_hf": lambda: save_hf(sd, cfg, tmp_path / "proj"),
        "save_pretrained": lambda: save_pretrained(cvt.create_model(cfg), tmp_path / "proj"),
    }[writer]
    with pytest.raises(WriteError, match=r"proj: holds config\.json but is not"):
        call()
    assert _unchanged(tmp_path / "proj", mine) and not temp_files(tmp_path)


def test_writers_replace_their_own_output_and_write_beside_other_files(tiny, tmp_path):
    """Our own directory is rewritten (the caller asked); a user's unrelated file beside it is kept."""
    _, sd, cfg = tiny
    out = tmp_path / "native"
    (out).mkdir()
    (out / "notes.txt").write_text("mine\n")
    save_native(sd, cfg, out)  # no conflict: written beside notes.txt
    save_native(sd, cfg, out)  # our own native directory: replaced
    assert (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "config.json").read_text())["format_tag"] == native.FORMAT_TAG
    hf = tmp_path / "hf"
    save_hf(sd, cfg, hf)
    save_hf(sd, cfg, hf)
    assert (hf / "model.safetensors").is_file()


def test_output_kinds_spell_the_tags_their_writers_write():
    """files.py spells the tags instead of importing them (it is the bottom of the core): they must agree."""
    from cvt.core import kerasfile

    assert files.NATIVE_DIR.how.endswith(f'"{native.FORMAT_TAG}"')
    assert files.KERAS_PRESET.how == f'config.json naming a "{kerasfile.PACKAGE}>" class'


def test_train_overwrite_never_removes_files_a_run_did_not_write(tmp_path, capsys):
    """A user's config.yaml / summary.json in --out: refused with and without --overwrite, nothing removed."""
    out = tmp_path / "proj"
    out.mkdir()
    (out / "config.yaml").write_text("my: recipe\n")
    (out / "summary.json").write_text('{"quarter": 3}\n')
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, lines = _cli(["train", "--out", str(out), "--set", "schedule.epochs=1", *extra], capsys)
        assert code == 1 and len(lines) == 1 and "did not write" in lines[0] and "config.yaml" in lines[0], lines
    assert (out / "config.yaml").read_text() == "my: recipe\n"
    assert (out / "summary.json").read_text() == '{"quarter": 3}\n'


def test_run_files_are_recognised_by_content(tmp_path):
    from cvt.train.checkpoint import save_checkpoint
    from cvt.train.trainer import is_run_file

    save_checkpoint(tmp_path / "last.pt", {"model": {}})
    torch.save({"model": {}}, tmp_path / "best.pt")  # a torch file, not a run's checkpoint
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.0}\n')
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "photo.jpg").write_bytes(b"x")
    assert is_run_file(tmp_path / "last.pt") and is_run_file(tmp_path / "metrics.jsonl")
    assert not is_run_file(tmp_path / "best.pt") and not is_run_file(tmp_path / "tensorboard")


# ---------------------------------------------------------------------------- class 5: suffixes
@pytest.mark.parametrize(
    "argv_tail, says",
    [
        (["x.h5", "--to", "native"], "x.h5"),
        (["x.pth", "--to", "native"], "x.pth"),
        (["x.safetensors", "--to", "official"], "must end in .pth or .pt"),
        (["x.onnx", "--to", "hf"], "x.onnx"),
    ],
)
def test_convert_refuses_a_suffix_of_another_format(tiny, tmp_path, capsys, argv_tail, says):
    src, *_ = tiny
    dst, *rest = argv_tail
    code, lines = _cli(["convert", str(src), str(tmp_path / dst), *rest], capsys)
    assert code == 1 and len(lines) == 1 and says in lines[0], lines
    assert os.listdir(tmp_path) == []


def test_python_writers_refuse_a_suffix_of_another_format(tiny, tmp_path):
    _, sd, cfg = tiny
    for call in (
        lambda: save_native(sd, cfg, tmp_path / "x.pth"),
        lambda: save_native(sd, cfg, tmp_path / "x.h5"),
        lambda: save_official(sd, tmp_path / "x.safetensors"),
        lambda: save_hf(sd, cfg, tmp_path / "x.json"),
    ):
        with pytest.raises(WriteError):
            call()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- Flax: trainer and Orbax
@pytest.fixture(scope="module")
def flax_trainer():
    pytest.importorskip("jax")
    pytest.importorskip("orbax.checkpoint")
    from cvt import flax as cf
    from cvt.flax import train as ft

    m = cf.create_model(cvt.core.get_config("cvt-tiny").replace(num_classes=10))
    return m, ft.Trainer(m, ft.make_optimizer(1e-3))


@pytest.mark.flax
def test_flax_trainer_refuses_bad_labels_and_leaves_the_model_alive(flax_trainer):
    from cvt.core.errors import DataError

    m, trainer = flax_trainer
    x = np.zeros((2, 64, 64, 3), np.float32)
    before = np.asarray(m(x))
    for y, says in (([99, 0], "99 is out of range"), ([-5, 0], "-5"), ([0.5, 0], "dtype float"), ([1], "shape")):
        with pytest.raises(DataError, match=f"labels: .*{says}"):
            trainer.step(x, np.array(y))
    assert np.isfinite(trainer.step(x, np.array([1, 2]))["loss"])
    # the user's model still runs (its arrays were not donated) and keeps its initial weights
    assert np.array_equal(np.asarray(m(x)), before)


@pytest.mark.flax
def test_orbax_never_replaces_a_users_directory_and_errors_are_one_line(flax_trainer, tmp_path):
    from cvt.flax.train import CheckpointError

    _, trainer = flax_trainer
    mine = _user_dir(tmp_path / "proj")
    with pytest.raises(WriteError, match=r"proj: holds config\.json, notes\.txt but is not an Orbax checkpoint"):
        trainer.save_checkpoint(tmp_path / "proj")
    assert _unchanged(tmp_path / "proj", mine)
    trainer.save_checkpoint(tmp_path / "ck")
    with pytest.raises(WriteError, match="already holds an Orbax checkpoint"):
        trainer.save_checkpoint(tmp_path / "ck")
    trainer.save_checkpoint(tmp_path / "ck", overwrite=True)
    trainer.restore_checkpoint(tmp_path / "ck")
    (tmp_path / "empty").mkdir()
    (tmp_path / "trunc").mkdir()
    for p in (tmp_path / "ck").rglob("*"):  # every file cut to 10 bytes, the layout kept
        q = tmp_path / "trunc" / p.relative_to(tmp_path / "ck")
        q.mkdir(parents=True, exist_ok=True) if p.is_dir() else q.write_bytes(p.read_bytes()[:10])
    for bad in ("empty", "proj", "absent", "trunc"):
        with pytest.raises(CheckpointError) as e:
            trainer.restore_checkpoint(tmp_path / bad)
        assert str(e.value).startswith(str(tmp_path / bad)) and "\n" not in str(e.value) and len(str(e.value)) < 300
    assert not temp_files(tmp_path)
