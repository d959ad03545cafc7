"""The core's torch-free checkpoint reader against torch's own (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from cvt.core.errors import WeightsError
from cvt.core.pickles import read_pickle


def _tensors() -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return OrderedDict(
        [
            ("float", torch.randn(3, 4, 2, 2, generator=g)),
            ("double", torch.randn(3, dtype=torch.float64, generator=g)),
            ("half", torch.randn(7, generator=g).half()),
            ("bf16", torch.randn(5, generator=g).bfloat16()),
            ("long", torch.arange(-3, 9)),
            ("int", torch.arange(4, dtype=torch.int32)),
            ("bool", torch.tensor([True, False, True])),
            ("uint8", torch.arange(250, 256, dtype=torch.uint8)),
            ("scalar", torch.tensor(7)),
            ("empty", torch.zeros(0, 3)),
            ("transposed", base.t()),  # a strided view
            ("slice", base[2:, 1:4]),  # an offset view sharing base's storage
            ("base", base),
            ("param", torch.nn.Parameter(torch.randn(2, 2, generator=g))),
        ]
    )


def _compare(ours, theirs) -> None:
    if isinstance(theirs, torch.Tensor):
        want = theirs.detach().float() if theirs.dtype == torch.bfloat16 else theirs.detach()
        assert isinstance(ours, np.ndarray)
        assert ours.shape == tuple(want.shape)
        np.testing.assert_array_equal(ours, want.numpy())
        return
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for k in theirs:
            _compare(ours[k], theirs[k])
        return
    if isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _compare(a, b)
        return
    assert ours == theirs


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_reads(tmp_path, zip_format):
    obj = {"state_dict": _tensors(), "epoch": 3, "names": ["a", "b"], "lr": 0.5, "nested": (1, {"x": None})}
    path = tmp_path / "ck.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    _compare(read_pickle(path), torch.load(path, weights_only=True))


def test_a_real_model_state_dict_round_trips(tmp_path):
    import cvt

    model = cvt.create_model("cvt-tiny")
    torch.save(model.state_dict(), tmp_path / "m.pth")
    _compare(read_pickle(tmp_path / "m.pth"), model.state_dict())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_code_is_refused_never_run(tmp_path, capsys, zip_format):
    torch.save({"w": torch.zeros(2), "x": _Evil()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=zip_format)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    for name in ("evil.pth", "plain.pkl"):
        with pytest.raises(WeightsError, match=r"refused to load: .*possibly code.*builtin_*s?\.print") as e:
            read_pickle(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
    assert "pwned" not in capsys.readouterr().out


def test_broken_files_are_one_line_errors(tmp_path):
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pth").read_bytes()
    (tmp_path / "legacy_truncated.pth").write_bytes(legacy[: len(legacy) - 100])
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02garbage" * 10)
    with open(tmp_path / "deep.pth", "wb") as f:  # a legacy-looking pickle nested past any recursion limit
        f.write(b"\x80\x02" + b"]" * 200_000 + b".")
    for name in ("truncated.pth", "legacy_truncated.pth", "garbage.pth", "deep.pth"):
        with pytest.raises(WeightsError) as e:
            read_pickle(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)


def test_a_view_past_its_storage_is_refused(tmp_path):
    """A hand-made file whose tensor claims more elements than its storage holds: refused, no read past it."""
    import zipfile

    torch.save({"w": torch.arange(4.0)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "bad.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04\x85", b"M\x00\x10\x85")  # size (4,) -> (4096,)
                assert b"M\x00\x10\x85" in data
            dst.writestr(info, data)
    with pytest.raises(WeightsError, match="reaches element"):
        read_pickle(tmp_path / "bad.pth")


# ---------------------------------------------------------------------------- timm's training checkpoints
def _timm_style_checkpoint(tmp_path, zip_format: bool = True, ema: bool = True):
    """What timm's ``CheckpointSaver`` writes (``model_best.pth.tar``), made with torch alone: the weights, EMA
    weights, a real AdamW state after a step, the ``argparse.Namespace`` of the run's arguments, bookkeeping."""
    import argparse

    import cvt

    model = cvt.create_model("cvt-tiny", num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).mean().backward()
    opt.step()
    args = argparse.Namespace(model="cvt_tiny", lr=1e-3, input_size=None, mean=None, model_kwargs={}, drop_path=0.1)
    saved = {"epoch": 3, "arch": "cvt_tiny", "state_dict": model.state_dict(), "optimizer": opt.state_dict()}
    saved.update(version=2, args=args, metric=50.0, saver={"checkpoint_files": [("checkpoint-3.pth.tar", 50.0)]})
    if ema:
        saved["state_dict_ema"] = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "model_best.pth.tar"
    torch.save(saved, path, _use_new_zipfile_serialization=zip_format)
    return model.eval(), path


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_timm_checkpoints_pass_with_their_namespace_and_optimizer(tmp_path, zip_format):
    import argparse

    _, path = _timm_style_checkpoint(tmp_path, zip_format)
    with torch.serialization.safe_globals([argparse.Namespace]):  # what timm's own loader allows
        theirs = torch.load(path, weights_only=True)
    ours = read_pickle(path)
    assert isinstance(ours["args"], argparse.Namespace) and ours["args"] == theirs["args"]
    _compare({k: v for k, v in ours.items() if k != "args"}, {k: v for k, v in theirs.items() if k != "args"})
    assert ours["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_code_inside_a_namespace_is_still_refused(tmp_path, capsys):
    import argparse

    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(x=_Evil())}, tmp_path / "evil.pth.tar")
    with pytest.raises(WeightsError, match=r"possibly code.*builtin_*s?\.print.*torch\.load\(f, weights_only=False\)"):
        read_pickle(tmp_path / "evil.pth.tar")
    assert "pwned" not in capsys.readouterr().out


def test_loaders_take_a_timm_checkpoints_state_dict(tmp_path):
    import cvt

    model, path = _timm_style_checkpoint(tmp_path)
    loaded = cvt.create_model("cvt-tiny", weights=path)  # state_dict, not the EMA weights
    assert loaded.num_classes == 3 and loaded.load_report.ok
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    ema_only = torch.load(path, weights_only=False)
    ema_only.pop("state_dict")
    torch.save(ema_only, tmp_path / "ema_only.pth.tar")
    with pytest.raises(WeightsError, match=r"holds EMA weights only \(state_dict_ema\); .*use_ema=True\)$") as e:
        cvt.create_model("cvt-tiny", weights=tmp_path / "ema_only.pth.tar")
    assert "clean_checkpoint" in str(e.value) and "\n" not in str(e.value)
    torch.save({"epoch": 1, "args": None}, tmp_path / "empty.pth.tar")
    with pytest.raises(WeightsError, match=r"does not contain a state dict \(a dict of args, epoch\)"):
        cvt.create_model("cvt-tiny", weights=tmp_path / "empty.pth.tar")
