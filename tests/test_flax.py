"""The Flax NNX CvT (cvt.flax): equal to cvt-torch and HF on the same random weights, files both ways, no torch.

Parity: same weights (BatchNorm statistics and LayerNorm affines randomised), logits under ``jax.jit`` with
matmul precision pinned to highest, <= 1e-5. The peer is the PyTorch model (and HF for ``activation="gelu"``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import TINY_HF, hf_model, randomize_norms

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import cvt  # noqa: E402
from cvt import flax as cf  # noqa: E402
from cvt.core.errors import WeightsError  # noqa: E402
from cvt.flax.weights import native_name  # noqa: E402
from cvt.torch.weights import save_native  # noqa: E402

pytestmark = pytest.mark.flax
TOL = 1e-5


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def tiny_config(method: str = "dw_bn", **changes) -> cvt.CvTConfig:
    cfg = cvt.get_config("cvt-tiny")
    stages = tuple(dataclasses.replace(s, qkv_proj_method=method) for s in cfg.stages)
    return cfg.replace(stages=stages, **changes)


def torch_pair(config: cvt.CvTConfig, seed: int = 0) -> tuple[torch.nn.Module, cf.CvT]:
    """A randomised cvt-torch model (eval) and the Flax model holding the same arrays (eval)."""
    torch.manual_seed(seed)
    tm = randomize_norms(cvt.create_model(config), seed=seed).eval()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    fm = cf.from_state_dict(config, sd)
    fm.eval()
    return tm, fm


def images(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 3, h, w)).astype(np.float32)  # NCHW


def nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def torch_logits(tm: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tm(torch.from_numpy(x)).numpy()


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(scope="module", params=["dw_bn", "avg", "linear"])
def pair(request):
    return torch_pair(tiny_config(request.param))


# ---------------------------------------------------------------------------- parity with cvt-torch
@pytest.mark.parametrize("b,h,w", [(2, 224, 224), (1, 224, 224), (1, 384, 384), (2, 100, 148)])
def test_logits_equal_torch_under_jit(pair, b, h, w):
    tm, fm = pair
    x = images(b, h, w)
    out = cf.jit_forward(fm)(nhwc(x))
    assert out.shape == (b, 10)
    assert max_diff(out, torch_logits(tm, x)) <= TOL


@pytest.mark.slow
def test_cvt13_logits_equal_torch_at_224():
    tm, fm = torch_pair(cvt.get_config("cvt-13"))
    x = images(2, 224, 224)
    assert max_diff(cf.jit_forward(fm)(nhwc(x)), torch_logits(tm, x)) <= TOL


def test_feature_maps_and_attention_equal_torch():
    tm, fm = torch_pair(tiny_config())
    x = images(2, 96, 128)
    with torch.no_grad():
        ref_final, ref = tm.forward_intermediates(torch.from_numpy(x))
        ref_attn = tm.forward_attention(torch.from_numpy(x))
    final, feats = cf.jit_forward(fm, "forward_intermediates")(nhwc(x))
    cls, ref_cls = final[:, :1], ref_final[:, :1]
    assert [f.shape for f in feats] == [(2, h, w, c) for c, h, w in tm.config.feature_shapes(96, 128)]
    for f, r in zip(feats, ref):
        assert max_diff(f, r.numpy().transpose(0, 2, 3, 1)) <= TOL
    assert max_diff(cls, ref_cls.numpy()) <= TOL
    assert max_diff(final, ref_final.numpy()) <= TOL
    last_two = nnx.eval_shape(lambda m, x: m.forward_intermediates(x, indices=2, intermediates_only=True), fm, nhwc(x))
    assert [f.shape[-1] for f in last_two] == [32, 48]
    with pytest.raises(cvt.core.errors.ConfigError, match="out of range"):
        fm.forward_intermediates(nhwc(x), indices=[3])
    attn = cf.jit_forward(fm, "forward_attention")(nhwc(x))
    assert [len(s) for s in attn] == [len(s) for s in ref_attn]
    for stage, ref_stage in zip(attn, ref_attn):
        for a, r in zip(stage, ref_stage):
            assert a.shape == tuple(r.shape)
            assert max_diff(a, r.numpy()) <= TOL


def test_stages_attention_and_derived_values_follow_the_torch_contract():
    """A stage returns ``(tokens, map)`` as in PyTorch; attention weights come from their own method (no flag);
    ``num_features`` / ``has_cls_token`` / ``num_classes`` are read from the config, not copied."""
    tm, fm = torch_pair(tiny_config())
    x = images(2, 64, 80)
    xt, xf = torch.from_numpy(x), nhwc(x)
    for torch_stage, stage in zip(tm.stages, fm.stages):
        with torch.no_grad():
            ref_tokens, xt = torch_stage(xt)
        tokens, xf = stage(xf)
        assert max_diff(tokens, ref_tokens.numpy()) <= TOL
        assert max_diff(xf, xt.numpy().transpose(0, 2, 3, 1)) <= TOL
    tokens, h, w = fm.stages[2].embed(fm.stages[1](fm.stages[0](nhwc(x))[1])[1])
    attn = fm.stages[2].blocks[0].attn
    weights = attn.attention_weights(tokens, h, w)  # (B, heads, 1 + HW, 1 + HkWk), rows sum to 1
    assert weights.shape == (2, 3, 1 + h * w, 1 + 2 * 3) and max_diff(weights.sum(-1), 1.0) <= TOL
    _, _, v = attn.qkv(tokens, h, w)
    explicit = attn.proj(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 1 + h * w, -1))
    assert max_diff(explicit, attn(tokens, h, w)) <= TOL
    assert (fm.num_features, fm.has_cls_token, fm.num_classes) == (48, True, 10)
    assert not {"num_features", "has_cls_token", "num_classes"} & set(vars(fm))  # properties of the config
    fm.reset_classifier(3, rngs=nnx.Rngs(0))
    assert fm.num_classes == fm.config.num_classes == 3


def test_gelu_model_equals_hf(hf_tiny_dir):
    """An HF directory (safetensors + config.json, read without torch) gives HF's own logits."""
    path, hf = hf_tiny_dir
    fm = cf.create_model(weights=path)
    assert fm.config.activation == "gelu" and fm.stages[0].blocks[0].drop_path.deterministic  # eval mode
    x = images(2, 64, 80)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert max_diff(cf.jit_forward(fm)(nhwc(x)), ref) <= TOL


def test_gelu_activation_override_equals_hf_state_dict():
    torch.manual_seed(3)
    hf = hf_model(**TINY_HF)
    from cvt.core.keys import to_native

    sd, fmt = to_native({k: v.numpy() for k, v in hf.state_dict().items()})
    assert fmt == "hf"
    fm = cf.from_state_dict(cvt.CvTConfig.from_hf_config(hf.config.to_dict()), sd)
    fm.eval()
    x = images(1, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert max_diff(cf.jit_forward(fm)(nhwc(x)), ref) <= TOL


# ---------------------------------------------------------------------------- files and errors
def test_native_file_moves_between_torch_and_flax(tmp_path):
    tm, _ = torch_pair(tiny_config())
    spec = cvt.PretrainedSpec(preprocess=cvt.EvalPreprocess.for_size(64), labels=tuple("abcdefghij"))
    save_native(tm.state_dict(), tm.config, tmp_path / "t.safetensors", spec)
    fm = cf.create_model(weights=tmp_path / "t.safetensors")  # config and spec from the metadata
    assert fm.pretrained_cfg == spec and fm.config == tm.config
    assert fm.stages[2].blocks[0].attn.conv_proj_k.bn.use_running_average  # eval mode
    x = images(2, 64, 64)
    assert max_diff(cf.jit_forward(fm)(nhwc(x)), torch_logits(tm, x)) <= TOL
    cf.save(fm, tmp_path / "f.safetensors")
    back = cvt.create_model(weights=tmp_path / "f.safetensors")
    assert back.pretrained_cfg == spec
    for k, v in tm.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_new_head_and_no_head(tmp_path):
    tm, fm = torch_pair(tiny_config())
    cf.save(fm, tmp_path / "m.safetensors")
    five = cf.create_model(weights=tmp_path / "m.safetensors", num_classes=5)
    assert five.head.kernel.shape == (48, 5) and five.config.num_classes == 5
    assert max_diff(five.stages[0].patch_embed.proj.kernel[...], fm.stages[0].patch_embed.proj.kernel[...]) == 0
    pooled = cf.create_model(weights=tmp_path / "m.safetensors", num_classes=0)
    x = images(2, 64, 64)
    with torch.no_grad():
        ref = tm.forward_head(tm.forward_features(torch.from_numpy(x)), pre_logits=True).numpy()
    assert max_diff(cf.jit_forward(pooled)(nhwc(x)), ref) <= TOL
    assert "head.weight" not in cf.state_dict(pooled)


def test_weight_errors_name_the_tensors():
    tm, _ = torch_pair(tiny_config())
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    broken = dict(sd)
    del broken["stages.1.blocks.0.mlp.fc1.weight"]
    broken["stages.0.extra"] = np.zeros(3, np.float32)
    broken["norm.weight"] = np.zeros(7, np.float32)
    with pytest.raises(WeightsError) as e:
        cf.from_state_dict(tm.config, broken)
    msg = str(e.value)
    assert "1 missing (first: stages.1.blocks.0.mlp.fc1.weight)" in msg
    assert "1 unexpected (first: stages.0.extra)" in msg
    assert "1 mis-shaped (first: norm.weight: file (7,) vs model (48,))" in msg and "\n" not in msg
    without_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    cf.from_state_dict(tm.config, without_counters)  # the counter is optional: it never changes a forward


def test_modes_and_input_checks():
    _, fm = torch_pair(tiny_config())
    x = nhwc(images(2, 64, 64))
    bn = fm.stages[0].blocks[0].attn.conv_proj_k.bn
    before = np.asarray(bn.running_mean[...])
    run = nnx.jit(lambda m, x: m(x))  # keeps the state changes (BatchNorm statistics)
    fm.train()
    train_out = run(fm, x)
    assert not np.array_equal(np.asarray(bn.running_mean[...]), before)  # statistics moved
    fm.eval()
    assert np.array_equal(np.asarray(run(fm, x)), np.asarray(run(fm, x)))
    assert max_diff(train_out, run(fm, x)) > 1e-3
    with pytest.raises(ValueError, match="NHWC"):
        fm.forward_features(jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(ValueError, match="empty"):
        fm.forward_features(jnp.zeros((1, 2, 2, 3)))


def test_random_init_follows_the_official_scheme():
    one_stage = cvt.CvTConfig(stages=(cvt.StageConfig(64, 1, 1, patch_size=7, patch_stride=4, patch_padding=2),))
    fm = cf.create_model(one_stage.replace(num_classes=3), seed=0)
    assert fm.stages[0].blocks[0].attn.conv_proj_k.bn.use_running_average  # eval mode
    proj = np.asarray(fm.stages[0].blocks[0].attn.proj_q.kernel[...])
    assert 0.018 < proj.std() < 0.022 and np.all(np.asarray(fm.stages[0].blocks[0].attn.proj_q.bias[...]) == 0)
    stem = np.asarray(fm.stages[0].patch_embed.proj.kernel[...])  # PyTorch default: uniform(+-1/sqrt(fan_in))
    assert np.abs(stem).max() <= 1 / np.sqrt(3 * 7 * 7) and stem.std() > 0.5 / np.sqrt(3 * 3 * 7 * 7)


_NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def test_flax_works_without_torch(tmp_path):
    tm, _ = torch_pair(tiny_config())
    save_native(tm.state_dict(), tm.config, tmp_path / "t.safetensors")
    x = images(2, 64, 64)
    np.save(tmp_path / "x.npy", x)
    code = _NO_TORCH + textwrap.dedent(
        """
        import json, numpy as np, jax, jax.numpy as jnp
        from cvt import flax as cf
        with jax.default_matmul_precision("highest"):
            m = cf.create_model(weights="t.safetensors")
            x = jnp.asarray(np.load("x.npy").transpose(0, 2, 3, 1))
            a = np.asarray(cf.jit_forward(m)(x))
            cf.save(m, "f.safetensors")
            b = np.asarray(cf.jit_forward(cf.create_model(weights="f.safetensors"))(x))
        np.save("a.npy", a)
        print(json.dumps({"torch": "torch" in sys.modules, "same": bool(np.array_equal(a, b))}))
        """
    )
    (tmp_path / "probe.py").write_text(code)
    proc = subprocess.run([sys.executable, "probe.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"torch": False, "same": True}
    assert max_diff(np.load(tmp_path / "a.npy"), torch_logits(tm, x)) <= TOL


# ---------------------------------------------------------------------------- linen adapter
def test_linen_adapter_init_apply_and_eval_equals_nnx():
    from cvt.flax import linen as cl

    _, fm = torch_pair(tiny_config())
    model = cl.to_linen(fm.config)
    x = nhwc(images(2, 64, 64))
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    assert set(variables) == {"params", "batch_stats"}
    out, updates = model.apply(variables, x, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    assert out.shape == (2, 10) and set(updates) == {"batch_stats"}
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    loaded = cl.linen_variables(fm)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    assert max_diff(model.apply(loaded, x, train=False), fm(x)) <= TOL


# ---------------------------------------------------------------------------- training and sharding
def _no_drop_config() -> cvt.CvTConfig:
    cfg = tiny_config()
    return cfg.replace(stages=tuple(dataclasses.replace(s, drop_path_rate=0.0) for s in cfg.stages))


def test_one_train_step_equals_pytorch():
    from cvt.flax import train as ft
    from cvt.train.optim import param_groups

    cfg = _no_drop_config()
    tm, fm = torch_pair(cfg)
    start = {k: v.clone() for k, v in tm.state_dict().items()}
    x, y = images(4, 64, 64), np.array([1, 7, 3, 1])
    tm.train()
    opt = torch.optim.AdamW(param_groups(tm, 0.05), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()

    trainer = ft.Trainer(fm, ft.make_optimizer(1e-3, weight_decay=0.05), label_smoothing=0.1)
    got = trainer.step(nhwc(x), y)["loss"]
    assert abs(got - loss.item()) <= TOL
    after, ref = cf.state_dict(trainer.model()), tm.state_dict()
    for k, v in ref.items():
        if "running" in k or k.endswith("num_batches_tracked"):  # momentum 0.1, unbiased variance
            assert max_diff(after[k], v.numpy()) <= TOL, k
            assert not torch.equal(v, start[k]), k
        elif not k.endswith("attn.proj_k.bias"):
            # NOTE: Adam divides by |grad|, so float32 rounding in tiny gradients shows in the step: compare
            # parameters to 5% of the step size (lr). The key bias cancels in the softmax: its gradient is
            # rounding noise alone, a step of either sign.
            assert max_diff(after[k], v.detach().numpy()) <= 0.05 * 1e-3, k


def test_decay_mask_follows_the_core_rule():
    from cvt.flax import train as ft
    from cvt.train.optim import param_groups

    tm, fm = torch_pair(tiny_config())
    mask = ft.decay_mask(nnx.state(fm, nnx.Param))
    leaves = jax.tree_util.tree_flatten_with_path(mask)[0]
    paths = [[n for n in ft._path_names(p) if n != "value"] for p, _ in leaves]  # drop the Variable's field
    flat = {native_name(tuple(p), 2): bool(v) for p, (_, v) in zip(paths, leaves)}
    groups = param_groups(tm, 0.05)
    names = {id(p): n for n, p in tm.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    assert {k for k, d in flat.items() if d} == decayed
    assert "stages.2.cls_token" not in decayed and "stages.0.blocks.0.attn.conv_proj_q.conv.weight" in decayed


def test_orbax_checkpoint_restores_the_training_state(tmp_path):
    from cvt.flax import train as ft

    _, fm = torch_pair(_no_drop_config())
    trainer = ft.Trainer(fm, ft.make_optimizer(1e-3), label_smoothing=0.1)
    x, y = nhwc(images(4, 64, 64)), np.array([0, 1, 2, 3])
    trainer.step(x, y)
    trainer.save_checkpoint(tmp_path / "ckpt")
    expected = trainer.step(x, y)["loss"]
    compiled = trainer._step._cache_size()
    trainer.restore_checkpoint(tmp_path / "ckpt")
    assert int(trainer.state.step) == 1
    assert trainer.step(x, y)["loss"] == expected
    assert trainer._step._cache_size() == compiled  # the restored state runs the step already compiled


_SHARDED = """
import json, sys, numpy as np, jax
from cvt import flax as cf
from cvt.flax import train as ft
sd = dict(np.load("sd.npz"))
from cvt.core.config import CvTConfig
cfg = CvTConfig.from_json(open("cfg.json").read())
x, y = np.load("x.npy"), np.array([0, 1, 2, 3, 4, 5, 6, 7])
out = {"devices": jax.device_count()}
with jax.default_matmul_precision("highest"):
    for name, mesh in (("one", None), ("two", ft.data_mesh())):
        trainer = ft.Trainer(cf.from_state_dict(cfg, sd), ft.make_optimizer(1e-3), label_smoothing=0.1, mesh=mesh)
        losses = [trainer.step(x, y)["loss"] for _ in range(2)]
        out[name] = {"losses": losses, "sd": {k: v.tolist() for k, v in cf.state_dict(trainer.model()).items()}}
json.dump(out, open("out.json", "w"))
"""


def test_two_device_step_equals_one_device(tmp_path):
    import os

    tm, _ = torch_pair(_no_drop_config())
    np.savez(tmp_path / "sd.npz", **{k: v.numpy() for k, v in tm.state_dict().items()})
    (tmp_path / "cfg.json").write_text(tm.config.to_json())
    np.save(tmp_path / "x.npy", images(8, 64, 64).transpose(0, 2, 3, 1))
    (tmp_path / "probe.py").write_text(_SHARDED)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run(
        [sys.executable, "probe.py"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["devices"] == 2
    assert max_diff(out["one"]["losses"], out["two"]["losses"]) <= TOL
    for k, v in out["one"]["sd"].items():
        if not k.endswith("attn.proj_k.bias"):  # rounding-noise gradient (see the PyTorch step test)
            assert max_diff(out["two"]["sd"][k], v) <= (TOL if "running" in k else 0.05 * 1e-3), k


def test_flax_digits_example_uses_the_pytorch_demo_split():
    import importlib.util
    from pathlib import Path

    from cvt.data.sources import digits_split

    path = Path(__file__).resolve().parents[1] / "examples" / "flax_digits.py"
    spec = importlib.util.spec_from_file_location("flax_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.digits_split is digits_split  # the demo's split itself, not a copy of it
    train, val = example.digits_split()
    assert len(train) == 1437 and len(val) == 360 and val.images.shape == (360, 8, 8)
    assert example.to_inputs(val.images[:2]).shape == (2, 32, 32, 3)
