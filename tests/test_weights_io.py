"""Every weight layout loads; bad files give one clear error each; writes are atomic."""

import dataclasses
import json
import os
import pickle

import pytest
import torch

import cvt
from cvt.core.errors import WeightsError
from cvt.core.keys import convert_state_dict
from cvt.torch.weights import read_weights, save_hf, save_native, save_official


@pytest.fixture
def tiny():
    from conftest import randomize_norms

    return randomize_norms(cvt.create_model("cvt-tiny")).eval()


def _same(a, b, x=None):
    x = torch.randn(2, 3, 64, 64) if x is None else x
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_every_layout_loads_to_the_same_model(tiny, tmp_path):
    sd = tiny.state_dict()
    off = convert_state_dict(sd, "native", "official")
    torch.save(off, tmp_path / "plain.pth")
    torch.save({"state_dict": off, "epoch": 3}, tmp_path / "wrapped_state_dict.pth")
    torch.save({"model": {"module." + k: v for k, v in off.items()}}, tmp_path / "wrapped_model_ddp.pth")
    save_native(sd, tiny.config, tmp_path / "native.safetensors")
    save_native(sd, tiny.config, tmp_path / "native_dir")
    save_hf(sd, tiny.config, tmp_path / "hf_dir")
    save_official(sd, tmp_path / "official.pth")
    hf_sd = convert_state_dict(sd, "native", "hf")
    torch.save(hf_sd, tmp_path / "pytorch_model.bin")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf_sd.items()}, str(tmp_path / "bare_hf.safetensors"))
    expected = {"plain.pth": "official", "wrapped_state_dict.pth": "official", "wrapped_model_ddp.pth": "official",
                "native.safetensors": "native", "native_dir": "native", "hf_dir": "hf", "official.pth": "official",
                "pytorch_model.bin": "hf", "bare_hf.safetensors": "hf"}  # fmt: skip
    for name, fmt in expected.items():
        loaded = read_weights(tmp_path / name)
        assert loaded.source_format == fmt, name
        model = cvt.create_model("cvt-tiny", weights=tmp_path / name)
        # the activation follows the file: an HF directory runs transformers' exact GELU (tests/test_resolution.py)
        assert model.config.activation == ("gelu" if name == "hf_dir" else "quick_gelu"), name
        _same(cvt.create_model("cvt-tiny", weights=tmp_path / name, activation="quick_gelu"), tiny)
    # self-describing files need no name
    _same(cvt.create_model(weights=tmp_path / "native.safetensors"), tiny)
    assert cvt.create_model(weights=tmp_path / "native.safetensors").config == tiny.config


def test_official_pth_architecture_is_inferred(tmp_path):
    model = cvt.create_model("cvt-13").eval()
    save_official(model.state_dict(), tmp_path / "CvT-13-224x224-IN-1k.pth")
    again = cvt.create_model(weights=tmp_path / "CvT-13-224x224-IN-1k.pth")
    assert again.config.name == "cvt-13" and again.config == model.config
    _same(again, model, torch.randn(1, 3, 96, 96))


def test_new_head_for_fine_tuning(tiny, tmp_path):
    save_native(tiny.state_dict(), tiny.config, tmp_path / "w.safetensors")
    model = cvt.create_model("cvt-tiny", weights=tmp_path / "w.safetensors", num_classes=3)
    assert model.head.out_features == 3 and "new head" in str(model.load_report)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # backbone is the file's
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   tiny.forward_head(tiny.forward_features(x), pre_logits=True))  # fmt: skip
    features = cvt.create_model("cvt-tiny", weights=tmp_path / "w.safetensors", num_classes=0)
    assert features(x).shape == (1, 48)


def test_wrong_architecture_leads_with_both_architectures_in_one_short_line(tmp_path):
    save_native(cvt.create_model("cvt-tiny").state_dict(), cvt.get_config("cvt-tiny"), tmp_path / "t.safetensors")
    with pytest.raises(WeightsError) as e:
        cvt.create_model("cvt-13", weights=tmp_path / "t.safetensors")
    msg = str(e.value)
    assert msg.startswith(
        f"{tmp_path / 't.safetensors'}: holds a cvt-tiny model (3 stages, widths 16/32/48, depths 1/2/3, 10 classes), "
        "not cvt-13 (3 stages, widths 64/192/384, depths 1/2/10, 1000 classes): "
    )
    assert "mis-shaped" in msg and "missing" in msg and "\n" not in msg and len(msg) < 400
    model = cvt.create_model("cvt-13", weights=tmp_path / "t.safetensors", strict=False)  # load what fits
    assert not model.load_report.ok and "mis-shaped" in str(model.load_report)


def test_same_widths_other_details_name_the_first_differing_tensor(tmp_path):
    """When the two architectures look alike at a glance, the line names the first tensor that differs."""
    cfg = cvt.get_config("cvt-tiny")
    wide = cfg.replace(stages=tuple(dataclasses.replace(s, mlp_ratio=2.0) for s in cfg.stages))
    save_native(cvt.CvT(wide).state_dict(), wide, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as e:
        cvt.create_model("cvt-tiny", weights=tmp_path / "w.safetensors")
    msg = str(e.value)
    assert "weights do not fit cvt-tiny (3 stages, widths 16/32/48" in msg
    assert "first: stages.0.blocks.0.mlp.fc1.weight: file (32, 16) vs model (64, 16)" in msg and "\n" not in msg


def test_expected_shapes_is_the_models_state_dict():
    """The framework-free schema the fit check uses is exactly the PyTorch model's (keys, order, shapes)."""
    from cvt.core.weights import expected_shapes

    base = cvt.get_config("cvt-tiny")
    for method, bias, classes in (("dw_bn", True, 10), ("avg", False, 0), ("linear", True, 3)):
        cfg = base.replace(
            num_classes=classes,
            in_chans=1,
            stages=tuple(dataclasses.replace(s, qkv_proj_method=method, qkv_bias=bias) for s in base.stages),
        )
        with torch.device("meta"):
            sd = cvt.CvT(cfg).state_dict()
        assert list(expected_shapes(cfg).items()) == [(k, tuple(v.shape)) for k, v in sd.items()]


def test_missing_batch_counts_are_no_error(tiny, tmp_path):
    """``num_batches_tracked`` never changes a forward pass and not every writer keeps it (Keras does not)."""
    sd = {k: v for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_native(sd, tiny.config, tmp_path / "n.safetensors")
    _same(cvt.create_model(weights=tmp_path / "n.safetensors"), tiny)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _bad_files(tmp_path, tiny):
    good = tmp_path / "good.pth"
    save_official(tiny.state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    save_native(tiny.state_dict(), tiny.config, tmp_path / "good.safetensors")
    st = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(st[: len(st) // 2])
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"stage0.patch_embed.proj.weight": _Evil()}, f)
    torch.save({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, tmp_path / "resnet.pth")
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return {
        "truncated.pth": "truncated or corrupt",
        "truncated.safetensors": "truncated or corrupt",
        "evil.pth": "refused to load",
        "resnet.pth": "not a CvT state dict",
        "notes.txt": "not a weight file",
        "empty.pth": "empty file",
        "picture.png": "not a weight file",
        "missing.pth": "no such file",
    }


def test_bad_files_give_one_clear_error_each(tmp_path, tiny):
    for name, problem in _bad_files(tmp_path, tiny).items():
        with pytest.raises(WeightsError) as e:
            cvt.create_model("cvt-tiny", weights=tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / name)), msg
        assert problem in msg, (name, msg)
        assert "\n" not in msg


def test_evil_pickle_never_runs(tmp_path, tiny, monkeypatch):
    _bad_files(tmp_path, tiny)
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(WeightsError):
        read_weights(tmp_path / "evil.pth")
    assert calls == []


def test_directory_outputs_are_published_whole(tiny, tmp_path, monkeypatch):
    """An HF / native directory appears complete or not at all: when the disk fills after the weights were written,
    while config.json is, no directory (not even an empty one) and no temporary one are left; over an existing
    directory its other files are kept."""
    from pathlib import Path

    real_write_text = Path.write_text

    def full_disk_at_config(self, *args, **kwargs):
        if "config.json" in self.name:
            raise OSError(28, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_at_config)
    for save in (save_hf, save_native):
        with pytest.raises(cvt.core.errors.WriteError, match="no space left on device"):
            save(tiny.state_dict(), tiny.config, tmp_path / "deeper" / "out")
        assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Path, "write_text", real_write_text)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("mine\n")
    save_hf(tiny.state_dict(), tiny.config, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    _same(cvt.create_model(weights=tmp_path / "out", activation=tiny.config.activation), tiny)


def test_hf_directory_refuses_what_transformers_cannot_run(tiny, tmp_path):
    """From transformers' modeling_cvt.py: dw_bn projections only, every cls token as wide as the last stage,
    more than i blocks in stage i (drop-path rates are indexed by stage), LayerNorm eps 1e-5."""
    cfg = tiny.config
    cases = {
        "avg": cfg.replace(stages=tuple(dataclasses.replace(s, qkv_proj_method="avg") for s in cfg.stages)),
        "last stage's width": cfg.replace(stages=(dataclasses.replace(cfg.stages[0], cls_token=True), *cfg.stages[1:])),
        "fewer than 3": cvt.get_config("cvt-digits"),
        "1e-5": cfg.replace(layer_norm_eps=1e-6),
    }
    for says, bad in cases.items():
        with pytest.raises(cvt.core.errors.ConversionError, match=f"^{tmp_path / 'hf'}: cannot write .*{says}"):
            save_hf(cvt.CvT(bad).state_dict(), bad, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, tiny, monkeypatch):
    target = tmp_path / "w.safetensors"
    save_native(tiny.state_dict(), tiny.config, target)
    before = target.read_bytes()
    import safetensors.torch

    def boom(sd, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(cvt.core.errors.WriteError, match=f"^{target}: cannot write \\(no space left on device\\)$"):
        save_native(tiny.state_dict(), tiny.config, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp files left


def test_native_file_carries_the_spec(tmp_path):
    tiny = cvt.create_model("cvt-tiny").eval()
    spec = cvt.PretrainedSpec(cvt.EvalPreprocess(img_size=48, crop_pct=1.0), labels=tuple("abcdefghij"), source="t")
    save_native(tiny.state_dict(), tiny.config, tmp_path / "t.safetensors", spec)
    again = cvt.create_model(weights=tmp_path / "t.safetensors")
    assert again.pretrained_cfg == spec and again.config == tiny.config
    # a new head drops the file's class names (they no longer describe the outputs)
    assert cvt.create_model(weights=tmp_path / "t.safetensors", num_classes=3).pretrained_cfg.labels is None


def test_native_files_written_before_the_spec_still_load(tmp_path):
    """0.1 files kept labels and preprocessing in ``config["extra"]``: they must keep working."""
    from safetensors.torch import save_file

    tiny = cvt.create_model("cvt-tiny").eval()
    config = {**tiny.config.to_dict(), "extra": {"labels": list("abcdefghij"), "preprocess": {"img_size": 40}}}
    meta = {"format": "pt", "format_tag": "cvt-torch", "config": json.dumps(config, indent=2)}
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "old.safetensors"), meta)
    again = cvt.create_model(weights=tmp_path / "old.safetensors")
    assert again.config == tiny.config and again.pretrained_cfg.labels.names == tuple("abcdefghij")
    assert again.pretrained_cfg.preprocess.img_size == 40
    _same(again, tiny)


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("stages.1.blocks.0.mlp.fc1.weight", float("nan"), "non-finite"),
        ("head.bias", float("inf"), "non-finite"),
        ("stages.2.blocks.1.attn.conv_proj_k.bn.running_var", -0.5, "impossible BatchNorm variance"),
    ],
)
def test_impossible_weights_are_refused_with_the_tensor_named(tmp_path, key, value, reason):
    tiny = cvt.create_model("cvt-tiny").eval()
    sd = tiny.state_dict()
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = value
    path = save_native(sd, tiny.config, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match=f"^{path}: tensor {key} .*{reason}"):
        cvt.create_model(weights=path)
    assert read_weights(path, check=False).state_dict[key].view(-1)[0].item() != 0  # inspection still possible
