"""Key conversion is data: round trips are exact and every key of every layout is explained."""

import os
from pathlib import Path

import pytest
import torch

import cvt
from conftest import temp_files, tree_fingerprint
from cvt.cli import main
from cvt.core.keys import ConversionError, convert_state_dict, detect_format, rename_key, to_native
from cvt.torch.model import CvT


def native_keys(name):
    with torch.device("meta"):
        return CvT(cvt.get_config(name)).state_dict()


@pytest.mark.parametrize("name, entries", [("cvt-13", 459), ("cvt-21", 731), ("cvt-w24", 833)])
def test_official_native_hf_official_round_trip_keys(name, entries):
    sd = native_keys(name)
    off = convert_state_dict(sd, "native", "official")
    assert len(off) == entries
    assert "stage2.cls_token" in off and "stage0.blocks.0.attn.conv_proj_q.bn.num_batches_tracked" in off
    native = convert_state_dict(off, "official", "native")
    hf = convert_state_dict(native, "native", "hf")
    back = convert_state_dict(hf, "hf", "official")
    assert list(back) == list(off)
    assert detect_format(off) == "official" and detect_format(hf) == "hf" and detect_format(native) == "native"


def test_round_trip_is_bit_exact_on_values():
    sd = {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in
          CvT(cvt.get_config("cvt-13")).state_dict().items()}  # fmt: skip
    off = convert_state_dict(sd, "native", "official")
    back = convert_state_dict(convert_state_dict(convert_state_dict(off, "official", "native"), "native", "hf"),
                              "hf", "official")  # fmt: skip
    assert all(torch.equal(off[k], back[k]) for k in off) and back.keys() == off.keys()


def test_hf_names_equal_transformers_model():
    transformers = pytest.importorskip("transformers")
    hf = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=1000))
    ours = convert_state_dict(CvT(cvt.get_config("cvt-13")).state_dict(), "native", "hf")
    theirs = hf.state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_selected_key_mappings():
    assert rename_key("stage1.blocks.0.attn.conv_proj_k.bn.running_var", "official", "hf") == (
        "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_key."
        "convolution_projection.normalization.running_var"
    )
    assert rename_key("stages.2.blocks.9.attn.proj.weight", "native", "hf") == (
        "cvt.encoder.stages.2.layers.9.attention.output.dense.weight"
    )
    assert rename_key("head.bias", "native", "hf") == "classifier.bias"
    assert rename_key("layernorm.weight", "hf", "official") == "norm.weight"
    with pytest.raises(ConversionError, match="no hf->native rule"):
        rename_key("norm.weight", "hf", "official")
    assert rename_key("layernorm.weight", "hf", "native") == "norm.weight"


def test_wrappers_and_backbone_prefixes():
    sd = native_keys("cvt-tiny")
    off = convert_state_dict(sd, "native", "official")
    ddp = {"module." + k: v for k, v in off.items()}
    assert to_native(ddp) == (sd, "official")
    hf = convert_state_dict(sd, "native", "hf")
    backbone = {k[len("cvt.") :]: v for k, v in hf.items() if k.startswith("cvt.")}
    native, fmt = to_native(backbone)
    assert fmt == "hf" and set(native) == {k for k in sd if not k.startswith(("norm.", "head."))}


def test_unexplained_keys_are_errors():
    with pytest.raises(ConversionError, match="pos_embed"):
        convert_state_dict({"stage0.pos_embedding": torch.zeros(1), "stage0.patch_embed.proj.weight": 1},
                           "official", "hf")  # fmt: skip
    with pytest.raises(ConversionError, match="not a CvT state dict"):
        detect_format({"conv1.weight": 1, "fc.weight": 2})


# ---------------------------------------------------------------------------- cvt convert: destinations, HF limits
@pytest.fixture
def tiny_file(tmp_path):
    from cvt.torch.weights import save_native

    model = cvt.create_model("cvt-tiny").eval()
    return save_native(model.state_dict(), model.config, tmp_path / "src" / "tiny.safetensors")


# (destination kind, layout, what the one line says); every row also runs with --force
DESTINATIONS = [
    ("directory", "native", "is a directory"),
    ("directory", "official", "is a directory"),
    ("fifo", "native", "not a regular file"),
    ("fifo", "hf", "not a directory"),
    ("file", "hf", "not a directory"),
    ("under-a-file", "official", "is not a directory"),
    ("under-a-file", "hf", "is not a directory"),
    ("under-read-only", "native", "permission denied"),
    ("under-read-only", "hf", "permission denied"),
]


@pytest.mark.parametrize("kind, to, says", DESTINATIONS, ids=[f"{k}-{t}" for k, t, _ in DESTINATIONS])
def test_unusable_destinations_are_refused_before_the_work(tiny_file, tmp_path, capsys, monkeypatch, kind, to, says):
    if kind == "under-read-only" and os.geteuid() == 0:
        pytest.skip("root writes through permission bits")
    out = tmp_path / "out"
    out.mkdir()
    name = {"native": "x.safetensors", "official": "x.pth", "hf": "x"}[to]  # a file, a file, a directory
    (out / "afile").write_text("a file\n")
    (out / "ro").mkdir()
    os.chmod(out / "ro", 0o555)
    try:
        dest = {
            "directory": out / name,
            "fifo": out / name,
            "file": out / name,
            "under-a-file": out / "afile" / name,
            "under-read-only": out / "ro" / name,
        }[kind]
        if kind == "directory":
            dest.mkdir()
        elif kind == "fifo":
            os.mkfifo(dest)
        elif kind == "file":
            dest.write_text("a file\n")
        before = tree_fingerprint(out)

        def no_work(*a, **k):  # the destination is checked before the weights are even read
            raise AssertionError("the conversion ran before the destination was checked")

        monkeypatch.setattr("cvt.commands.convert.create_model", no_work)
        for force in ([], ["--force"]):
            assert main(["convert", str(tiny_file), str(dest), "--to", to, *force]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"cvt convert: error: {dest}: ") and says in err, err
            assert tree_fingerprint(out) == before and temp_files(tmp_path) == []
    finally:
        os.chmod(out / "ro", 0o755)


@pytest.mark.parametrize("to, name", [("native", "link.safetensors"), ("official", "link.pth"), ("hf", "link")])
def test_symlinked_destination_is_written_through(tiny_file, tmp_path, capsys, to, name):
    target = tmp_path / ("real" if to == "hf" else "real" + Path(name).suffix)
    if to == "hf":
        target.mkdir()
    else:
        target.write_bytes(b"old")
    link = tmp_path / name
    link.symlink_to(target)
    assert main(["convert", str(tiny_file), str(link), "--to", to, "--force"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert cvt.create_model(weights=target).config.stages == cvt.get_config("cvt-tiny").stages
    assert temp_files(tmp_path) == []


def test_hf_refuses_what_transformers_cannot_run_and_leaves_nothing(tmp_path, capsys):
    """cvt-digits has 2 blocks in stage 2: transformers' CvT indexes drop-path rates by stage and cannot build it."""
    from cvt.torch.weights import save_native

    digits = cvt.create_model("cvt-digits")
    save_native(digits.state_dict(), digits.config, tmp_path / "digits.safetensors")
    assert main(["convert", str(tmp_path / "digits.safetensors"), str(tmp_path / "new" / "hf"), "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write an HF directory: stage 2 has 2 block(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.safetensors"]  # no directory, no temporary


def test_hf_of_a_quick_gelu_model_says_what_transformers_computes(tiny_file, tmp_path, capsys):
    """transformers always computes exact GELU: converting a quick_gelu model (every official checkpoint) is
    allowed, as the hub's copies were made, with one note; --activation gelu accepts it; quick_gelu is refused."""
    assert main(["convert", str(tiny_file), str(tmp_path / "hf"), "--to", "hf"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'hf'}") and err.count("\n") == 1
    assert err.startswith("cvt convert: note: ") and "runs quick_gelu, but transformers' CvT computes gelu" in err
    assert main(["convert", str(tiny_file), str(tmp_path / "hf2"), "--to", "hf", "--activation", "gelu"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["convert", str(tiny_file), str(tmp_path / "hf3"), "--to", "hf", "--activation", "quick_gelu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--activation quick_gelu: an HF directory records no activation" in err
    assert not (tmp_path / "hf3").exists()
