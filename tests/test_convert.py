"""Key conversion is data: round trips are exact and every key of every layout is explained."""

import pytest
import torch

import cvt
from cvt.core.keys import ConversionError, convert_state_dict, detect_format, rename_key, to_native
from cvt.model import CvT


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
