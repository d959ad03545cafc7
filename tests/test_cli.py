"""The ``cvt`` command through ``main([...])`` and as a subprocess (exit codes, one-line errors)."""

import json
import subprocess
import sys

import pytest
import torch

import cvt
from cvt.cli import main
from cvt.weights.io import save_official


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("list", "info", "convert"):
        assert verb in out


def test_list_and_info(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(cvt.list_models())
    assert main(["info", "cvt-13", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 19_997_480 and round(info["macs"] / 1e9, 2) == 4.57
    assert [s["map"] for s in info["stages"]] == [[56, 56], [28, 28], [14, 14]]
    assert main(["info", "cvt-13", "-r", "384"]) == 0
    assert "16.27 G" in capsys.readouterr().out
    assert main(["info", "cvt-w24", "--resolution", "224"]) == 0
    assert "60.92 G" in capsys.readouterr().out


def test_info_errors(capsys):
    assert main(["info", "cvt-99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cvt info: error: unknown model 'cvt-99'") and err.count("\n") == 1
    assert main(["info", "cvt-13", "-r", "2"]) == 2
    assert "empty" in capsys.readouterr().err


def test_convert_round_trip_all_layouts(tmp_path, capsys):
    from conftest import randomize_norms

    model = randomize_norms(cvt.create_model("cvt-tiny")).eval()
    save_official(model.state_dict(), tmp_path / "official.pth")
    assert main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "n.safetensors"), "--to", "native",
                 "--model", "cvt-tiny"]) == 0  # fmt: skip
    assert main(["convert", str(tmp_path / "n.safetensors"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pth"), "--to", "official"]) == 0
    a = torch.load(tmp_path / "official.pth", weights_only=True)
    b = torch.load(tmp_path / "back.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "wrote" in capsys.readouterr().out
    # existing destination is refused without --force
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pth"), "--to", "official"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_convert_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.pth").write_text("hello")
    assert main(["convert", str(tmp_path / "junk.pth"), str(tmp_path / "o.safetensors"), "--to", "native"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.pth: not a weight file" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_python_dash_m_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cvt", "info", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown model" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cvt", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "cvt-w24-384-22k" in r.stdout
