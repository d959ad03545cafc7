"""One file-writing path: refuses non-regular destinations, writes through symlinks, honours the umask, cleans up."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
import textwrap

import pytest

from conftest import read_only_dir
from cvt.core.errors import WriteError
from cvt.core.files import (
    OutputKind,
    atomic_write,
    atomic_write_dir,
    check_writable,
    check_writable_dir,
    remove_stale_temps,
    write_text,
)


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


def test_writes_and_replaces_atomically(tmp_path):
    out = tmp_path / "a" / "b" / "report.json"
    write_text(out, "one")
    write_text(out, "two")
    assert out.read_text() == "two" and _leftovers(out.parent) == []


def test_new_files_follow_the_umask_and_existing_ones_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
        (tmp_path / "kept.txt").write_text("x")
        os.chmod(tmp_path / "kept.txt", 0o604)
        write_text(tmp_path / "kept.txt", "y")
        assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_symlinked_destination_is_written_through(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_non_regular_destinations_are_refused(tmp_path, kind):
    if kind == "directory":
        dest = tmp_path / "d"
        dest.mkdir()
    elif kind == "fifo":
        dest = tmp_path / "f"
        os.mkfifo(dest)
    else:
        dest = tmp_path / "null"
        dest.symlink_to("/dev/null")  # a link to a character device: never replaced by a file
    with pytest.raises(WriteError, match=f"^{dest}: "):
        check_writable(dest)
    with pytest.raises(WriteError, match=f"^{dest}: "):
        write_text(dest, "x")
    assert not dest.is_file() or kind == "device"
    assert _leftovers(tmp_path) == []
    if kind == "device":
        assert os.path.realpath(dest) == "/dev/null" and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_failing_writer_leaves_nothing_behind(tmp_path):
    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write(tmp_path / "new" / "deeper" / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []  # no temp file and no empty directories


def test_read_only_directory_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only_dir(ro) as read_only:
        if not read_only:
            pytest.skip("root writes through permission bits, and the immutable flag is not available here")
        with pytest.raises(WriteError, match="permission denied"):
            check_writable(ro / "out.json")
        with pytest.raises(WriteError, match=f"{ro / 'out.json'}: cannot write"):  # the write itself, unchecked
            atomic_write(ro / "out.json", lambda tmp: tmp.write_text("x"))
    assert os.listdir(ro) == []


def test_full_disk_is_named_and_cleaned(tmp_path):
    """RLIMIT_FSIZE in a child process stands in for a full disk, portably."""
    code = textwrap.dedent(
        f"""
        import resource, sys
        from cvt.core.files import write_text
        from cvt.core.errors import WriteError
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:
            write_text({str(tmp_path / "big.txt")!r}, "x" * 100_000)
        except WriteError as e:
            print(e)
            sys.exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == f"{tmp_path / 'big.txt'}: cannot write (file too large: file-size limit or full disk)"
    assert list(tmp_path.iterdir()) == []
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # the parent's limits are untouched


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp.pt").write_bytes(b"half")
    (tmp_path / ".hf.x1y2z3.tmp").mkdir()  # an interrupted directory write
    (tmp_path / ".hf.x1y2z3.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"whole")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".hf.x1y2z3.tmp", ".last.pt.abc123.tmp.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _Refused(Exception):
    pass


def _refuse(tmp):
    assert tmp.name.startswith(".") and ".tmp" in tmp.name and tmp.exists()  # checks see the temporary copy
    raise _Refused("verification failed")


def test_a_failed_check_publishes_nothing(tmp_path):
    """``check(tmp)`` runs on the finished temporary file: if it raises, nothing appears (or changes) at the
    destination and the temporary file and the directories made for it are gone."""
    with pytest.raises(_Refused):
        atomic_write(tmp_path / "new" / "m.onnx", lambda tmp: tmp.write_bytes(b"bad"), check=_refuse)
    assert list(tmp_path.iterdir()) == []
    write_text(tmp_path / "m.onnx", "old")
    with pytest.raises(_Refused):
        atomic_write(tmp_path / "m.onnx", lambda tmp: tmp.write_bytes(b"bad"), check=_refuse)
    assert (tmp_path / "m.onnx").read_text() == "old" and _leftovers(tmp_path) == []
    seen = []
    good = tmp_path / "m.onnx"
    atomic_write(good, lambda tmp: tmp.write_bytes(b"good"), check=lambda tmp: seen.append(tmp.read_bytes()))
    assert seen == [b"good"] and (tmp_path / "m.onnx").read_bytes() == b"good"


def _fill(tmp):
    (tmp / "config.json").write_text("{}")
    (tmp / "variables").mkdir()
    (tmp / "variables" / "data").write_text("new")


def test_directory_outputs(tmp_path):
    """New: one rename. Existing: the new entries replace theirs (a subdirectory swapped whole), others are kept.
    A failed write or check leaves no temporary and no empty directory; non-directories are refused."""
    out = tmp_path / "a" / "out"
    atomic_write_dir(out, _fill)
    assert sorted(os.listdir(out)) == ["config.json", "variables"] and _leftovers(out.parent) == []
    (out / "README").write_text("mine")
    (out / "variables" / "stale").write_text("old")
    (out / "config.json").write_text("old")
    # a directory its writer does not recognise as its own output: same-named entries are never replaced
    with pytest.raises(WriteError, match=r"config\.json"):
        atomic_write_dir(out, _fill)
    assert (out / "config.json").read_text() == "old" and (out / "variables" / "stale").is_file()
    ours = OutputKind("test output", ("config.json", "variables"), "always ours", lambda d: True)
    atomic_write_dir(out, _fill, kind=ours)
    assert sorted(os.listdir(out)) == ["README", "config.json", "variables"]
    assert os.listdir(out / "variables") == ["data"] and (out / "config.json").read_text() == "{}"
    with pytest.raises(_Refused):
        atomic_write_dir(out, _fill, check=_refuse, kind=ours)
    assert sorted(os.listdir(out)) == ["README", "config.json", "variables"]
    with pytest.raises(_Refused):
        atomic_write_dir(tmp_path / "b" / "c", _fill, check=_refuse)
    assert sorted(os.listdir(tmp_path)) == ["a"]
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for bad in ("file", "fifo"):
        for call in (check_writable_dir, lambda p: atomic_write_dir(p, _fill)):
            with pytest.raises(WriteError, match=f"^{tmp_path / bad}: not a directory"):
                call(tmp_path / bad)
    (out / "config.json").unlink()
    (out / "config.json").mkdir()  # an entry of the wrong kind: refused before anything moves
    (out / "variables" / "data").write_text("before")
    with pytest.raises(WriteError, match=r"config\.json: is a directory"):
        atomic_write_dir(out, _fill, kind=ours)
    assert (out / "variables" / "data").read_text() == "before" and _leftovers(out) == []


def test_folder_walk_is_loop_safe_and_visits_each_file_once(tmp_path):
    from cvt.core.images import list_images

    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    for p in (root / "cats" / "a.jpg", root / "dogs" / "b.png", root / "dogs" / "c.txt"):
        p.write_bytes(b"x")
    (root / "cats" / "loop").symlink_to(root)  # a link back to an ancestor
    (root / "dogs" / "self").symlink_to(root / "dogs")  # a self-referencing link
    (root / "dogs" / "again.png").symlink_to(root / "dogs" / "b.png")  # a second name for one file
    (root / "x.jpg").symlink_to(root / "y.jpg")
    (root / "y.jpg").symlink_to(root / "x.jpg")  # a symlink cycle that resolves nowhere: reported by its reader
    found = list_images(root)
    assert found == [str(root / p) for p in ("x.jpg", "y.jpg", "cats/a.jpg", "dogs/again.png")]
