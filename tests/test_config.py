import dataclasses
import json

import pytest
import torch

import cvt
from cvt.core import spellings
from cvt.core.config import ConfigError, CvTConfig, StageConfig, conv_out


def test_presets_match_official_yaml():
    c13, c21, w24 = (cvt.get_config(n) for n in ("cvt-13", "cvt-21", "cvt-w24"))
    assert [s.embed_dim for s in c13.stages] == [64, 192, 384]
    assert [s.depth for s in c13.stages] == [1, 2, 10]
    assert [s.depth for s in c21.stages] == [1, 4, 16]
    assert [s.embed_dim for s in w24.stages] == [192, 768, 1024]
    assert [s.num_heads for s in w24.stages] == [3, 12, 16]
    assert [s.drop_path_rate for s in w24.stages] == [0.0, 0.0, 0.3]
    assert [s.cls_token for s in c13.stages] == [False, False, True]
    assert [(s.patch_size, s.patch_stride, s.patch_padding) for s in c13.stages] == [(7, 4, 2), (3, 2, 1), (3, 2, 1)]
    assert c13.activation == "quick_gelu" and c13.layer_norm_eps == 1e-5
    assert cvt.get_config("cvt-21-384-22k").img_size == 384


def test_list_models_has_design_names():
    names = set(cvt.list_models())
    expected = {"cvt-13", "cvt-21", "cvt-w24", "cvt-13-384", "cvt-21-384", "cvt-13-384-22k", "cvt-21-384-22k",
                "cvt-w24-384-22k", "cvt-tiny"}  # fmt: skip
    assert expected <= names
    assert set(cvt.list_models(pretrained=True)) == expected - {"cvt-w24", "cvt-tiny"}


@pytest.mark.parametrize("name", ["cvt-13", "cvt-w24", "cvt-tiny"])
def test_json_round_trip(name, tmp_path):
    cfg = cvt.get_config(name).replace(num_classes=2)
    assert CvTConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert CvTConfig.from_json(tmp_path / "c.json") == cfg


def test_official_spec_round_trip_and_yaml_values():
    # The SPEC block of the official experiments/imagenet/cvt/cvt-13-224x224.yaml, as yaml loads it.
    spec = {
        "INIT": "trunc_norm", "NUM_STAGES": 3, "PATCH_SIZE": [7, 3, 3], "PATCH_STRIDE": [4, 2, 2],
        "PATCH_PADDING": [2, 1, 1], "DIM_EMBED": [64, 192, 384], "NUM_HEADS": [1, 3, 6], "DEPTH": [1, 2, 10],
        "MLP_RATIO": [4.0, 4.0, 4.0], "ATTN_DROP_RATE": [0.0, 0.0, 0.0], "DROP_RATE": [0.0, 0.0, 0.0],
        "DROP_PATH_RATE": [0.0, 0.0, 0.1], "QKV_BIAS": [True, True, True], "CLS_TOKEN": [False, False, True],
        "POS_EMBED": [False, False, False], "QKV_PROJ_METHOD": ["dw_bn", "dw_bn", "dw_bn"],
        "KERNEL_QKV": [3, 3, 3], "PADDING_KV": [1, 1, 1], "STRIDE_KV": [2, 2, 2], "PADDING_Q": [1, 1, 1],
        "STRIDE_Q": [1, 1, 1],
    }  # fmt: skip
    cfg = CvTConfig.from_official_spec(spec, name="cvt-13")
    assert cfg == cvt.get_config("cvt-13")
    assert CvTConfig.from_official_spec(cfg.to_official_spec(), name="cvt-13") == cfg
    # lower-case keys (the TF port passes the same dict) are accepted too
    assert CvTConfig.from_official_spec({k.lower(): v for k, v in spec.items()}, name="cvt-13") == cfg


def test_hf_config_round_trip():
    transformers = pytest.importorskip("transformers")
    hf = transformers.CvtConfig(depth=[1, 4, 16], num_labels=5).to_dict()
    cfg = CvTConfig.from_hf_config(hf)
    assert [s.depth for s in cfg.stages] == [1, 4, 16]
    assert cfg.activation == "gelu" and cfg.num_classes == 5
    back = transformers.CvtConfig(**cfg.to_hf_config())
    for key in ("depth", "embed_dim", "num_heads", "cls_token", "drop_path_rate", "stride_kv"):
        assert list(getattr(back, key)) == list(hf[key]), key
    assert back.num_labels == 5


def _bad(**stage_changes):
    base = cvt.get_config("cvt-13")
    stages = list(base.stages)
    stages[1] = dataclasses.replace(stages[1], **stage_changes)
    return lambda: base.replace(stages=tuple(stages))


@pytest.mark.parametrize(
    "make, field",
    [
        (_bad(num_heads=5), "stages[1].num_heads"),
        (_bad(qkv_proj_method="conv"), "stages[1].qkv_proj_method"),
        (_bad(drop_path_rate=-0.1), "stages[1].drop_path_rate"),
        (_bad(attn_drop_rate=1.5), "stages[1].attn_drop_rate"),
        (_bad(depth=0), "stages[1].depth"),
        (_bad(patch_size=99, patch_padding=0), "stages[1].patch_size"),
        (_bad(kernel_qkv=40, padding_kv=0), "stages[1].kernel_qkv"),
        (lambda: cvt.get_config("cvt-13").replace(activation="relu"), "activation"),
        (lambda: cvt.get_config("cvt-13").replace(num_classes=-1), "num_classes"),
        (lambda: CvTConfig(stages=()), "stages"),
    ],
)
def test_invalid_configs_name_the_field(make, field):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(field), str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_official_spec_lists():
    spec = cvt.get_config("cvt-13").to_official_spec()
    spec["DEPTH"] = [1, 2]
    with pytest.raises(ConfigError, match=r"SPEC\.DEPTH: expected 3 per-stage values, got 2"):
        CvTConfig.from_official_spec(spec)
    spec = cvt.get_config("cvt-13").to_official_spec()
    spec["NUM_HEADZ"] = [1, 1, 1]
    with pytest.raises(ConfigError, match=r"SPEC\.NUM_HEADZ: unknown field"):
        CvTConfig.from_official_spec(spec)
    spec = cvt.get_config("cvt-13").to_official_spec()
    spec["POS_EMBED"] = [True, False, False]
    with pytest.raises(ConfigError, match="POS_EMBED"):
        CvTConfig.from_official_spec(spec)


def test_from_dict_rejects_unknown_and_missing():
    d = cvt.get_config("cvt-tiny").to_dict()
    d["stages"][0]["embed_dimm"] = 3
    with pytest.raises(ConfigError, match=r"stages\[0\]\.embed_dimm: unknown field"):
        CvTConfig.from_dict(d)
    d = cvt.get_config("cvt-tiny").to_dict()
    del d["stages"][2]["depth"]
    with pytest.raises(ConfigError, match=r"stages\[2\]"):
        CvTConfig.from_dict(d)
    with pytest.raises(ConfigError, match="stages"):
        CvTConfig.from_dict(json.loads('{"stages": 3}'))


def test_drop_path_ramp_equals_official_linspace():
    for name in ("cvt-13", "cvt-21", "cvt-w24"):
        for s in cvt.get_config(name).stages:
            official = [x.item() for x in torch.linspace(0, s.drop_path_rate, s.depth)]
            assert s.drop_path_rates() == pytest.approx(official, abs=1e-7)
    model = cvt.create_model("cvt-13")
    rates = [blk.drop_path.p for blk in model.stages[2].blocks]
    assert rates == pytest.approx([x.item() for x in torch.linspace(0, 0.1, 10)], abs=1e-7)
    assert rates[0] == 0.0 and [b.drop_path.p for b in model.stages[0].blocks] == [0.0]


def test_conv_out_matches_torch():
    for size in (1, 5, 14, 56, 57):
        for k, s, p in ((3, 2, 1), (7, 4, 2), (3, 1, 1), (2, 2, 0), (3, 3, 1), (4, 3, 2), (2, 3, 1)):  # last 3: a
            # last ceil-mode window may start in the right padding, and PyTorch drops it
            for ceil in (False, True):
                if 2 * p > k:
                    continue
                x = torch.zeros(1, 1, size, size)
                if size + 2 * p < k:
                    continue
                ref = torch.nn.functional.avg_pool2d(x, k, s, p, ceil_mode=ceil).shape[-1]
                assert conv_out(size, k, s, p, ceil) == ref, (size, k, s, p, ceil)


class _Traced:
    """A size known only at run time (a traced scalar): arithmetic works, comparing or branching on it raises."""

    def __init__(self, value: int):
        self.value = value

    def _op(self, other, fn):
        return _Traced(fn(self.value, other.value if isinstance(other, _Traced) else other))

    def __add__(self, other):
        return self._op(other, int.__add__)

    def __sub__(self, other):
        return self._op(other, int.__sub__)

    def __floordiv__(self, other):
        return self._op(other, int.__floordiv__)

    def __bool__(self):
        raise TypeError("a traced size has no truth value")

    __lt__ = __le__ = __gt__ = __ge__ = __bool__


def test_conv_out_computes_on_traced_sizes():
    """Keras sizes the ``avg`` projection of a map whose size is a tensor: ``conv_out`` never branches on it."""
    for size in (5, 14, 57):
        for k, s, p in ((3, 2, 1), (3, 3, 1), (4, 3, 2), (2, 3, 1), (7, 4, 2)):
            for ceil in (False, True):
                assert conv_out(_Traced(size), k, s, p, ceil).value == conv_out(size, k, s, p, ceil)


def test_spellings_module_and_the_classmethods_agree():
    """The foreign spellings are functions of ``cvt.core.spellings``; ``CvTConfig``'s classmethods delegate."""
    cfg = cvt.get_config("cvt-13")
    assert spellings.to_official_spec(cfg) == cfg.to_official_spec()
    assert spellings.from_official_spec(cfg.to_official_spec(), name="cvt-13") == cfg
    assert spellings.to_hf_config(cfg) == cfg.to_hf_config()
    # every StageConfig field survives HF's spelling (HF's activation is exact GELU: override it back)
    assert spellings.from_hf_config(cfg.to_hf_config(), activation="quick_gelu", name="cvt-13") == cfg
    assert set(spellings.STAGE_FIELDS) == {f.name for f in dataclasses.fields(StageConfig)}


def test_derived_values_are_properties_of_the_config():
    cfg = cvt.get_config("cvt-13")
    assert cfg.num_features == 384 and cfg.has_cls_token
    no_cls = cfg.replace(stages=(*cfg.stages[:2], dataclasses.replace(cfg.stages[2], cls_token=False)))
    assert not no_cls.has_cls_token


def test_stage_config_defaults_are_official_later_stages():
    s = StageConfig(192, 2, 3)
    assert (s.patch_size, s.patch_stride, s.patch_padding, s.stride_kv, s.kernel_qkv) == (3, 2, 1, 2, 3)
