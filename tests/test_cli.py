"""The ``cvt`` command through ``main([...])`` and as a subprocess (exit codes, one-line errors)."""

import importlib
import inspect
import json
import re
import subprocess
import sys

import pytest
import torch

import cvt
from cvt.cli import main
from cvt.torch.weights import save_official

VERBS = ["list", "info", "convert", "predict", "train", "eval", "export", "bench", "serve"]


def _help(capsys, *argv: str) -> str:
    assert main([*argv, "--help"]) == 0  # argparse exits; main returns its status (also in-process)
    return capsys.readouterr().out


def test_usage_errors_are_one_line_without_the_usage_block(capsys):
    assert main(["predict", "x.png", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["cvt predict: error: argument --batch-size: must be >= 1, got 0 (see cvt predict --help)"]
    assert main(["nope"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_help_lists_verbs(capsys):
    assert re.findall(r"^    (\w+) ", _help(capsys), flags=re.M) == VERBS  # all of them, in this order
    for verb in VERBS:
        assert _help(capsys, verb).startswith(f"usage: cvt {verb} ")


def _option_help(text: str, flag: str) -> str:
    """The help of ``flag`` in a verb's ``--help``, whitespace collapsed."""
    options = " ".join(text.split("options:")[1].split())
    return options.split(f" {flag} ", 1)[1].split(" --", 1)[0]


# (verb, option, the library callable and its parameter whose default the option must take)
LIBRARY_DEFAULTS = [
    ("predict", "--batch-size", "cvt.predict:Predictor", "batch_size"),
    ("predict", "--topk", "cvt.predict:Predictor", "topk"),
    ("predict", "--max-pixels", "cvt.predict:Predictor", "max_pixels"),
    ("export", "--format", "cvt.torch.export:export_model", "fmt"),
    ("export", "--atol", "cvt.torch.export:export_model", "atol"),
    ("bench", "--model", "cvt.bench:run_benchmark", "model_name"),
    ("bench", "--repeats", "cvt.bench:run_benchmark", "repeats"),
    ("bench", "--device", "cvt.bench:run_benchmark", "device"),
]


@pytest.mark.parametrize("verb, flag, target, name", LIBRARY_DEFAULTS)
def test_verb_help_shows_the_library_default(capsys, verb, flag, target, name):
    module, attr = target.split(":")
    default = inspect.signature(getattr(importlib.import_module(module), attr)).parameters[name].default
    assert f"(default: {default})" in _option_help(_help(capsys, verb), flag)


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
    to_native = ["--to", "native", "--model", "cvt-tiny"]
    assert main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "n.safetensors"), *to_native]) == 0
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


def test_options_come_from_the_signature(capsys):
    """The rules of cvt.commands._signature on one made-up verb: flags, types, choices, bounds, help."""
    import argparse
    from collections.abc import Sequence
    from typing import Annotated, Literal

    from cvt.commands._signature import Arg, add_function_arguments, call

    def verb(
        src: str,
        *,
        size: Annotated[list[int] | None, Arg("-r", metavar="R")] = None,
        mode: Literal["a", "b"] = "a",
        count: Annotated[int, Arg(minimum=1)] = 3,
        sets: Annotated[Sequence[str], Arg("--set", repeat=True)] = (),
        progress: bool = True,
        force: bool = False,
    ) -> dict:
        """Do a thing.

        Args:
            src: the input
            count: how many
                times
            progress: progress bar
        """
        return dict(locals())

    parser = add_function_arguments(argparse.ArgumentParser(prog="cvt verb"), verb)
    defaults = {"src": "x", "size": None, "mode": "a", "count": 3, "sets": [], "progress": True, "force": False}
    assert call(parser.parse_args(["x"])) == defaults
    argv = ["x", "-r", "3", "4", "--mode", "b", "--set", "a=1", "b=2", "--set", "c=3", "--no-progress", "--force"]
    got = call(parser.parse_args([*argv, "--count", "2"]))
    changed = {"size": [3, 4], "mode": "b", "count": 2, "sets": ["a=1", "b=2", "c=3"], "progress": False}
    assert got == {**defaults, **changed, "force": True}
    text = " ".join(parser.format_help().split())
    assert text.startswith("usage: cvt verb") and "Do a thing." in text
    assert "--count COUNT how many times (default: 3)" in text and "--no-progress no progress bar" in text
    for bad, message in ((["x", "--mode", "c"], "invalid choice: 'c'"), (["x", "--count", "0"], "must be >= 1")):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(bad)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_without_torch_the_core_verbs_work_and_the_others_say_what_to_install():
    code = "import sys; sys.modules['torch'] = None; from cvt.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "cvt-w24-384-22k" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, "info", "cvt-13"], capture_output=True, text=True)
    assert r.returncode == 0 and "4.57 G" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, "predict", "cat.jpg"], capture_output=True, text=True)
    expected = "cvt predict: error: needs torch, which is not installed: pip install 'cvt-models[torch]'\n"
    assert r.returncode == 1 and r.stderr == expected


def test_an_unforeseen_exception_is_one_line_and_debug_keeps_the_traceback(monkeypatch, capsys):
    import cvt.commands.models as models

    def broken(pretrained=False):
        raise RuntimeError("something nobody checked for\nsecond line")

    monkeypatch.setattr(models, "list_models", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cvt list: error: RuntimeError: something nobody checked for (rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="nobody checked"):
        main(["--debug", "list"])


def test_an_error_from_a_dataloader_worker_prints_its_own_message():
    """PyTorch re-raises a worker's exception with the worker's traceback inside the message; the CLI's one line
    is the original message."""
    from cvt.core.errors import DataError, first_line

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise DataError("a.png: truncated")

    with pytest.raises(DataError) as info:
        list(torch.utils.data.DataLoader(Broken(), num_workers=1))
    assert "Original Traceback" in str(info.value)
    assert first_line(info.value) == "a.png: truncated"
