"""Every export format reloads and matches eager within 1e-4 on several shapes (dynamic batch and size)."""

import os

import pytest
import torch

import cvt
from conftest import randomize_norms, temp_files, tree_fingerprint
from cvt.cli import main
from cvt.core.errors import UsageError
from cvt.torch.export import ExportError, export_model

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_norms(cvt.create_model("cvt-tiny")).eval()


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("exported-program", ".pt2")])
def test_torch_exports(tiny, tmp_path, fmt, suffix):
    keys = tiny.state_dict().keys()
    res = export_model(tiny, tmp_path / f"m{suffix}", fmt)
    assert res.max_abs_diff <= 1e-4 and len(res.checked_shapes) == 3
    assert {s[0] for s in res.checked_shapes} == {1, 2, 3}
    # the file holds the fused model (BatchNorm folded away); the model passed in is left as it was
    if fmt == "torchscript":
        graph = str(torch.jit.load(str(res.path)).inlined_graph)
        assert "silu" in graph and "batch_norm" not in graph
    else:
        graph = torch.export.load(str(res.path)).graph_module.code
        assert "silu" in graph and "batch_norm" not in graph
    assert not tiny.fused and tiny.state_dict().keys() == keys


def test_onnx_dynamic_batch_and_size(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    shapes = [(1, 3, 64, 64), (4, 3, 64, 64), (2, 3, 96, 80), (1, 3, 128, 72)]
    res = export_model(tiny, tmp_path / "m.onnx", "onnx", check_shapes=shapes)
    assert res.max_abs_diff <= 1e-4


def test_export_errors(tiny, tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(tiny, tmp_path / "m.x", "tflite")
    with pytest.raises(ExportError, match=r"\.pt2"):
        export_model(tiny, tmp_path / "m.zip", "exported-program")


def test_cli_export(tmp_path, capsys):
    assert main(["export", str(tmp_path / "tiny"), "--model", "cvt-tiny", "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert "tiny.pt" in out and "max |diff|" in out and (tmp_path / "tiny.pt").exists()
    loaded = torch.jit.load(str(tmp_path / "tiny.pt"))
    assert loaded(torch.randn(5, 3, 64, 64)).shape == (5, 10)
    assert main(["export", str(tmp_path / "tiny.pt"), "--model", "cvt-tiny", "--format", "torchscript"]) == 2


# ---------------------------------------------------------------------------- published only once verified


def test_a_failed_verification_publishes_nothing(tiny, tmp_path):
    """The fused export differs from eager by ~1e-7: atol 1e-30 fails the check on the temporary file, so the
    destination never appears, an existing file there is left as it was, and no temporary file remains. (One
    format suffices: every format goes through the same atomic_write(check=...).)"""
    fmt = "torchscript"
    dest = tmp_path / "sub" / "m.pt"
    with pytest.raises(ExportError, match=f"^{dest}: {fmt} output differs from eager by .* > atol 1e-30 .*not written"):
        export_model(tiny, dest, fmt, atol=1e-30)
    assert list(tmp_path.iterdir()) == []  # neither the file, nor a temporary one, nor the directory made for it
    dest.parent.mkdir()
    dest.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="not written"):
        export_model(tiny, dest, fmt, atol=1e-30)
    assert dest.read_bytes() == b"the previous export" and temp_files(tmp_path) == []


def test_cli_failed_export_keeps_the_old_file_even_with_force(tmp_path, capsys):
    dest = tmp_path / "m.pt"
    dest.write_bytes(b"the previous export")
    argv = ["export", str(dest), "--model", "cvt-tiny", "--format", "torchscript", "--force", "--atol", "1e-30"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cvt export: error: {dest}: torchscript output differs")
    assert dest.read_bytes() == b"the previous export" and temp_files(tmp_path) == []


@pytest.mark.parametrize("atol", [-1.0, float("nan"), float("inf")])
def test_invalid_atol_is_a_usage_error(tiny, tmp_path, capsys, atol):
    with pytest.raises(UsageError, match="atol: must be a finite number >= 0"):
        export_model(tiny, tmp_path / "m.pt", "torchscript", atol=atol)
    assert (
        main(["export", str(tmp_path / "m.pt"), "--model", "cvt-tiny", "--format", "torchscript", "--atol", str(atol)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cvt export: error: --atol: must be a finite number >= 0")
    assert list(tmp_path.iterdir()) == []


def _destinations(tmp_path):
    """name -> (OUTPUT argument, what the one line says); each made in ``tmp_path``."""
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "afile").write_text("a file\n")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    return {
        "directory": (tmp_path / "adir", "is a directory"),
        "fifo": (tmp_path / "fifo", "not a regular file"),
        "under-a-file": (tmp_path / "afile" / "m.pt", "is not a directory"),
        "under-read-only": (tmp_path / "ro" / "m.pt", "permission denied"),
    }


@pytest.mark.parametrize("kind", ["directory", "fifo", "under-a-file", "under-read-only"])
def test_unusable_destinations_are_refused_before_the_trace(tmp_path, capsys, monkeypatch, kind):
    if kind == "under-read-only" and os.geteuid() == 0:
        pytest.skip("root writes through permission bits")
    try:
        dest, says = _destinations(tmp_path)[kind]
        before = tree_fingerprint(tmp_path)

        def no_trace(*a, **k):  # the destination is checked before any slow work
            raise AssertionError("traced before the destination was checked")

        monkeypatch.setattr(torch.jit, "trace", no_trace)
        for force in ([], ["--force"]):
            assert main(["export", str(dest), "--model", "cvt-tiny", "--format", "torchscript", *force]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"cvt export: error: {dest}: ") and says in err, err
            assert tree_fingerprint(tmp_path) == before and temp_files(tmp_path) == []
        with pytest.raises(cvt.core.errors.WriteError, match=says):
            export_model(cvt.create_model("cvt-tiny"), dest, "torchscript")
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_symlinked_destination_is_written_through(tiny, tmp_path, capsys):
    target = tmp_path / "real.pt"
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    assert main(["export", str(link), "--model", "cvt-tiny", "--format", "torchscript", "--force"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert torch.jit.load(str(target))(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert temp_files(tmp_path) == []


@pytest.mark.keras
@pytest.mark.slow  # one TensorFlow process: 30-40 s on two shared cores
def test_keras_exports_follow_the_same_publish_rule(tmp_path):
    """``cvt export --format litert|saved-model`` (through Keras on TensorFlow): a verified export is written with
    its suffix; LiteRT / SavedModel go through the same atomic_write(check=...): a failed verification keeps the old
    file (--force or not), and a SavedModel re-exported over an existing one keeps the directory's other files."""
    pytest.importorskip("tensorflow")
    import dataclasses
    import subprocess
    import sys
    import textwrap

    import cvt
    from cvt.torch.weights import save_native

    (tmp_path / "m.tflite").write_bytes(b"the previous export")
    # one block per stage: the publish rule does not depend on depth, and TensorFlow traces it in half the time
    config = cvt.get_config("cvt-tiny")
    config = config.replace(stages=tuple(dataclasses.replace(st, depth=1) for st in config.stages))
    model = cvt.create_model(config)
    save_native(model.state_dict(), model.config, tmp_path / "tiny.safetensors")
    code = textwrap.dedent(
        f"""
        import os, sys
        from cvt.cli import main
        os.chdir({str(tmp_path)!r})
        base = ["--weights", "tiny.safetensors", "--force"]
        ok = main(["export", "ok", "--weights", "tiny.safetensors", "--format", "litert"])  # the suffix is added
        a = main(["export", "m.tflite", *base, "--format", "litert", "--atol", "0"])  # LiteRT differs by ~1e-7
        os.makedirs("sm/variables")
        for name in ("sm/NOTES", "sm/saved_model.pb", "sm/variables/stale"):
            open(name, "w").write("old")
        b = main(["export", "sm", *base, "--format", "saved-model"])
        print("codes", ok, a, b)
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "codes 0 1 0" in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "ok.tflite").is_file() and "max |diff| vs Keras eager" in proc.stdout
    assert "m.tflite: the litert export differs from Keras eager" in proc.stderr
    assert (tmp_path / "m.tflite").read_bytes() == b"the previous export"
    assert sorted(os.listdir(tmp_path / "sm")) == ["NOTES", "assets", "fingerprint.pb", "saved_model.pb", "variables"]
    assert "stale" not in os.listdir(tmp_path / "sm" / "variables")  # the SavedModel's own entries are replaced whole
    assert (tmp_path / "sm" / "saved_model.pb").read_bytes() != b"old" and temp_files(tmp_path) == []
