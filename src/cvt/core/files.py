"""The one way this library writes a file (or an output directory): checked first, written aside, verified,
published by an atomic rename.

Rules (every artefact: weights, checkpoints, exports, reports, plots):

* **Only regular files are replaced.** A destination that is a directory, a device, a FIFO or a socket is refused
  with one line naming it; nothing is written.
* **Symlinks are written through.** A destination that is a symbolic link keeps being that link: the file it
  points to is replaced (atomically, in the target's directory). The link itself is never replaced by a file.
* **Atomic.** The bytes go to a temporary file beside the destination (``.NAME.XXXX.tmpSUFFIX``), are fsynced,
  then renamed over it: a reader sees the old file or the new one, never half of one. On any failure the
  temporary file is removed, and directories created for the write are removed again (no empty folders left).
* **Permissions** follow the umask for new files (``0o666 & ~umask``, as ``open()`` would give), and an existing
  destination keeps its mode. In a directory output every new file and subdirectory follows the umask too,
  whatever mode its writer gave it (safetensors creates 0600 files).
* **Errors** are one line naming the destination (never the temporary file) and saying why: no space left,
  read-only file system, permission denied, file-size limit ...: :class:`~cvt.core.errors.WriteError`.
* **Verified before published.** ``atomic_write(path, write, check=...)`` runs ``check(tmp)`` on the finished
  temporary file (fsynced, final mode) just before the rename; if it raises, the temporary file is removed and
  the exception propagates: nothing appears at ``path`` and an existing file there is left unchanged. Exports
  (ONNX, TorchScript, ExportedProgram, LiteRT) load the temporary file back and compare it with eager this way, so
  a file that fails verification is never published. ``check`` should raise the caller's own error, not an
  ``OSError`` (which would be reported as a write failure).
* **Directories** (an HF directory, a native directory, a SavedModel) go the same way with
  :func:`atomic_write_dir`: ``write(tmp_dir)`` fills a fresh temporary directory (``.NAME.XXXX.tmp``), then
  ``check(tmp_dir)``; a new destination is the renamed temporary directory; an existing destination directory
  has each of the new top-level entries replaced (a file by an atomic rename, a subdirectory by a swap), and
  keeps its other entries: a failed write leaves neither a temporary directory nor an empty one.
* **Never replace what cvt did not write.** A directory output has a kind (:class:`OutputKind`: a native or HF
  directory, a Keras preset, a SavedModel, an Orbax checkpoint, a training run), recognised by a file cvt itself
  writes there (native ``config.json``'s ``format_tag``, HF ``config.json``'s ``model_type: "cvt"``, a preset's
  ``cvt>`` class, ``saved_model.pb``, Orbax's ``_CHECKPOINT_METADATA``, the run's ``config.yaml`` header). An
  existing destination that is not of that kind keeps every entry: new names are written beside them, and a
  same-named entry is refused (one line naming the directory and the entries) before anything moves; a
  destination of that kind has its entries replaced (callers make that explicit: ``--force``, ``overwrite=``).
  :func:`check_destination` runs this check up front. **Suffixes** name the format: :func:`check_suffix` refuses
  a file output whose suffix is not its format's, and a directory output named like a file (``x.h5``).
* :func:`check_writable` (:func:`check_writable_dir` for a directory output) runs the same checks up front, so a
  long job (an evaluation, a training run, an export) can refuse an unusable output path before it starts;
  :func:`remove_stale_temps` cleans the temporary files of an interrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WriteError

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large: file-size limit or full disk",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}
TEMP_MARK = ".tmp"


def reason(e: OSError) -> str:
    """A short human reason for an OS error (``no space left on device`` ...)."""
    return _REASONS.get(e.errno or 0) or (e.strerror or str(e) or type(e).__name__).lower()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _target(path: str | os.PathLike[str]) -> tuple[Path, os.stat_result | None]:
    """``(what a write to path replaces: path or a symlink's target, its stat or None when absent)``."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        return target, os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)})") from None


def destination(path: str | os.PathLike[str]) -> Path:
    """The file that a write to ``path`` replaces: ``path``, or the target of a symlink. Raises :class:`WriteError`
    for anything that is not (or would not be) a regular file."""
    target, st = _target(path)
    if st is None:
        return target
    if stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{path}: is a directory (expected a file name)")
    if not stat.S_ISREG(st.st_mode):
        raise WriteError(f"{path}: not a regular file (a device, FIFO or socket); refusing to replace it")
    return target


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Refuse now, with the reason, a destination that a later write would fail on; returns :func:`destination`.

    Checks the kind of file and that the nearest existing directory above it accepts new files.
    """
    dest = destination(path)
    parent = _check_parent(path, dest)
    if dest.exists() and not os.access(dest, os.W_OK) and not os.access(parent, os.W_OK):
        raise WriteError(f"{path}: cannot write (permission denied)")
    return dest


def _check_parent(path: str | os.PathLike[str], dest: Path) -> Path:
    """The nearest existing directory above ``dest``, refused (naming ``path``) unless it accepts new entries."""
    parent = dest.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(f"{path}: cannot write ({parent} is not a directory)")
    _refuse_unwritable(path, parent, f": {parent}")
    return parent


def _refuse_unwritable(path: str | os.PathLike[str], directory: Path, where: str = "") -> None:
    """Raise :class:`WriteError` naming ``path`` unless ``directory`` accepts new entries."""
    if os.access(directory, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "read-only file system" if read_only else "permission denied"
    raise WriteError(f"{path}: cannot write ({why}{where})")


def _make_parents(directory: Path) -> list[Path]:
    """Create missing directories; return the ones created (deepest last) so a failure can remove them."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d == d.parent:
            break
        d = d.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        created.append(d)
    return created


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], check: Callable[[Path], None] | None = None
) -> Path:
    """Call ``write(tmp)``, fsync, ``check(tmp)`` if given, then rename ``tmp`` over ``path`` (module docstring).

    ``tmp`` keeps the destination's suffix last (some writers, e.g. ``torch.export.save``, insist on it).
    Returns ``path``. Raises :class:`WriteError` naming ``path`` for file-system failures; an exception raised by
    ``write`` or ``check`` itself propagates unchanged (after the clean-up: no temporary file, no directory
    created for the write, the destination as it was).
    """
    path = Path(path)
    dest = destination(path)
    created: list[Path] = []
    tmp: Path | None = None
    done = False
    try:
        created = _make_parents(dest.parent)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{TEMP_MARK}{dest.suffix}", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        mode = stat.S_IMODE(os.stat(dest).st_mode) if dest.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
        tmp = None
        done = True
        _fsync_dir(dest.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not done:
            _remove_empty(created)
    return path


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories a failed write created (deepest first; only while they are empty)."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


def destination_dir(path: str | os.PathLike[str]) -> Path:
    """The directory that a directory output at ``path`` fills: ``path``, or the target of a symlink to a
    directory. Raises :class:`WriteError` when ``path`` exists and is not a directory."""
    target, st = _target(path)
    if st is None:
        return target
    if not stat.S_ISDIR(st.st_mode):
        kind = "a file" if stat.S_ISREG(st.st_mode) else "a device, FIFO or socket"
        raise WriteError(f"{path}: not a directory ({kind}; expected a directory name)")
    return target


def check_writable_dir(path: str | os.PathLike[str]) -> Path:
    """:func:`check_writable` for a directory output (:func:`atomic_write_dir`); returns :func:`destination_dir`."""
    dest = destination_dir(path)
    if dest.exists():
        _refuse_unwritable(path, dest)
        return dest
    _check_parent(path, dest)
    return dest


# ---------------------------------------------------------------------------- what is ours to replace
RUN_HEADER = "# resolved recipe written by cvt train"  # the first line of a run directory's config.yaml
# Suffixes that name a file format: a directory output named with one is a mistake (``save_native(m, "x.h5")``).
FILE_SUFFIXES = frozenset(
    (
        *(".safetensors", ".pth", ".pt", ".pt2", ".bin", ".ckpt", ".h5", ".hdf5", ".keras", ".onnx", ".tflite"),
        *(".pb", ".pkl", ".pickle", ".npz", ".npy", ".msgpack", ".json", ".yaml", ".yml", ".txt", ".csv"),
        *(".zip", ".tar", ".gz", ".png", ".jpg", ".jpeg"),
    )
)
# NOTE: the tags below are spelled here, not imported (cvt.core.native, cvt.core.kerasfile), so that this module
# stays the bottom of the core's import graph; tests/test_hostile_writes.py checks they agree.


@dataclass(frozen=True)
class OutputKind:
    """A kind of directory output: ``name`` for messages, ``entries`` the top-level names its writer creates,
    ``how`` the rule (for messages) that ``recognise(directory)`` applies to an existing directory."""

    name: str
    entries: tuple[str, ...]
    how: str
    recognise: Callable[[Path], bool]


def _small_json(path: Path, limit: int = 1 << 20) -> Any:
    """The JSON value in ``path`` (None when absent, larger than ``limit`` bytes or not JSON): a cheap probe."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def _config_json(directory: Path) -> dict[str, Any]:
    d = _small_json(directory / "config.json")
    return d if isinstance(d, dict) else {}


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(200)
    except OSError:
        return ""


NATIVE_DIR = OutputKind(
    "a cvt native directory",
    ("config.json", "model.safetensors"),
    'config.json with format_tag "cvt-torch"',
    lambda d: _config_json(d).get("format_tag") == "cvt-torch",
)
HF_DIR = OutputKind(
    "an HF CvT directory",
    ("config.json", "model.safetensors", "preprocessor_config.json"),
    'config.json with model_type "cvt"',
    lambda d: _config_json(d).get("model_type") == "cvt",
)
KERAS_PRESET = OutputKind(
    "a cvt.keras preset",
    ("config.json", "metadata.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json"),
    'config.json naming a "cvt>" class',
    lambda d: str(_config_json(d).get("registered_name", "")).startswith("cvt>"),
)
SAVED_MODEL = OutputKind(
    "a SavedModel",
    ("saved_model.pb", "variables", "assets", "fingerprint.pb"),
    "saved_model.pb",
    lambda d: (d / "saved_model.pb").is_file(),
)
ORBAX_CHECKPOINT = OutputKind(
    "an Orbax checkpoint",
    (),  # Orbax's own layout; the whole directory is replaced
    "Orbax's _CHECKPOINT_METADATA",
    lambda d: (d / "_CHECKPOINT_METADATA").is_file(),
)
RUN_DIR = OutputKind(
    "a cvt train run directory",
    (),  # the trainer lists its own files (cvt.train.trainer.OWNED_FILES)
    f"config.yaml starting {RUN_HEADER!r}",
    lambda d: _first_line(d / "config.yaml").startswith(RUN_HEADER),
)
KINDS = (NATIVE_DIR, HF_DIR, KERAS_PRESET, SAVED_MODEL, ORBAX_CHECKPOINT, RUN_DIR)
ANY_OUTPUT = OutputKind(
    "a directory cvt wrote",
    (),
    "file by which cvt recognises one of its outputs (files.KINDS)",
    lambda d: any(k.recognise(d) for k in KINDS),
)


def foreign_entries(directory: Path, names: list[str] | tuple[str, ...], kind: OutputKind) -> list[str]:
    """Which of ``names`` exist in ``directory`` while it is not ``kind`` of output: what a write must not replace."""
    present = [n for n in names if os.path.lexists(directory / n)]
    if not present or kind.recognise(directory):
        return []
    return present


def refuse_foreign(shown: str | os.PathLike[str], present: list[str], kind: OutputKind) -> None:
    """Raise the one line for a directory whose entries ``present`` cvt did not write (empty list: nothing)."""
    if present:
        held = ", ".join(present[:4]) + (" ..." if len(present) > 4 else "")
        raise WriteError(
            f"{shown}: holds {held} but is not {kind.name} (no {kind.how}); refusing to replace them: "
            "choose a new or empty directory"
        )


def check_destination(path: str | os.PathLike[str], kind: OutputKind) -> Path:
    """Refuse now a directory output ``kind`` at ``path`` that a write would refuse later: not a directory, not
    writable, or holding same-named entries while not ``kind`` of output. Returns :func:`destination_dir`."""
    check_suffix(path, (), kind.name)
    dest = check_writable_dir(path)
    if dest.is_dir():
        refuse_foreign(path, foreign_entries(dest, kind.entries, kind), kind)
    return dest


def check_suffix(path: str | os.PathLike[str], suffixes: tuple[str, ...], what: str) -> None:
    """Refuse a file output whose suffix is not one of ``suffixes``; with ``()``, a directory output whose name
    carries a file format's suffix (:data:`FILE_SUFFIXES`; an existing directory of that name is accepted)."""
    suffix = Path(path).suffix.lower()
    if suffixes:
        if suffix not in suffixes:
            got = suffix or "no suffix"
            raise WriteError(f"{path}: {what} must end in {' or '.join(suffixes)}, not {got}")
    elif suffix in FILE_SUFFIXES and not Path(path).is_dir():
        raise WriteError(f"{path}: {what} is a directory, and {suffix} names a file format; drop the suffix")


def atomic_write_dir(
    path: str | os.PathLike[str],
    write: Callable[[Path], None],
    check: Callable[[Path], None] | None = None,
    *,
    kind: OutputKind = ANY_OUTPUT,
    whole: bool = False,
) -> Path:
    """Call ``write(tmp_dir)`` on a fresh temporary directory, ``check(tmp_dir)`` if given, then publish it at
    ``path`` (module docstring: a new directory is renamed into place; an existing one has the new entries
    replaced, its other entries kept). Returns ``path``; errors as :func:`atomic_write`.

    ``kind``: what an existing destination must be recognised as before a same-named entry in it is replaced
    (else one :class:`WriteError` line, nothing moved). ``whole``: an existing destination (empty, or ``kind``)
    is replaced as a whole (swapped), not merged: for layouts whose stale entries would mislead (Orbax).
    """
    path = Path(path)
    dest = destination_dir(path)
    existed = dest.exists()
    if whole and existed:
        if any(dest.iterdir()) and not kind.recognise(dest):
            refuse_foreign(path, sorted(p.name for p in dest.iterdir()), kind)
        return _swap_dir(path, dest, write, check)
    created: list[Path] = []
    tmp: Path | None = None
    done = False
    try:
        if not existed:
            created = _make_parents(dest.parent)
        # beside a new destination (one rename publishes it); inside an existing one (each entry one rename)
        home = dest if existed else dest.parent
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TEMP_MARK, dir=home))
        write(tmp)
        _follow_umask(tmp)
        _fsync_tree(tmp)
        if check is not None:
            check(tmp)
        if existed:
            _merge_into(tmp, dest, path, kind)
        else:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a new directory follows the umask
            os.rename(tmp, dest)
            tmp = None
        done = True
        _fsync_dir(dest if existed else dest.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(created)
    return path


def _follow_umask(root: Path) -> None:
    """Give everything a writer put under ``root`` the mode ``open()`` / ``mkdir()`` would: ``0o666 & ~umask`` for
    files (``0o777`` for one written executable), ``0o777 & ~umask`` for directories.

    Writers do not all honour the umask (safetensors creates 0600 files), and a published weight file another
    user, a container or a web server cannot read is a broken output. ``root`` itself is left as it is (a new
    destination gets its mode when it is renamed into place). An entry replacing an existing file later takes
    that file's mode instead (:func:`_merge_into`). Symbolic links are not followed.
    """
    mask = _umask()
    for directory, dirs, names in os.walk(root):
        for name in dirs:
            p = Path(directory, name)
            if not p.is_symlink():
                os.chmod(p, 0o777 & ~mask)
        for name in names:
            p = Path(directory, name)
            if p.is_symlink() or not p.is_file():
                continue
            executable = os.stat(p).st_mode & 0o111
            os.chmod(p, (0o777 if executable else 0o666) & ~mask)


def _fsync_tree(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            p = Path(directory, name)
            if p.is_file() and not p.is_symlink():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())


def _swap_dir(path: Path, dest: Path, write: Callable[[Path], None], check: Callable[[Path], None] | None) -> Path:
    """Write a new directory beside ``dest``, then put it in ``dest``'s place (the old one removed after)."""
    tmp: Path | None = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TEMP_MARK, dir=dest.parent))
    aside: Path | None = None
    try:
        write(tmp)
        _follow_umask(tmp)
        _fsync_tree(tmp)
        if check is not None:
            check(tmp)
        os.chmod(tmp, stat.S_IMODE(os.stat(dest).st_mode))
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=f"{TEMP_MARK}.old", dir=dest.parent))
        os.rename(dest, aside / dest.name)
        os.rename(tmp, dest)
        tmp = None
        _fsync_dir(dest.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)})") from None
    finally:
        if tmp is not None:
            if aside is not None and not dest.exists() and (aside / dest.name).exists():
                os.rename(aside / dest.name, dest)  # the second rename failed: the old directory goes back
            shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return path


def _merge_into(tmp: Path, dest: Path, shown: Path, kind: OutputKind = ANY_OUTPUT) -> None:
    """Replace ``dest``'s entries by ``tmp``'s top-level ones: every conflict is found before anything moves, and
    same-named entries are replaced only when ``dest`` is ``kind`` of output (module docstring)."""
    entries = sorted(tmp.iterdir())
    refuse_foreign(shown, foreign_entries(dest, [e.name for e in entries], kind), kind)
    for new in entries:
        old = dest / new.name
        if not os.path.lexists(old):
            continue
        if new.is_dir():
            if old.is_symlink() or not old.is_dir():
                raise WriteError(f"{shown / new.name}: not a directory; refusing to replace it")
        else:
            destination(old)  # a directory, FIFO ... there: one line naming it
    for new in entries:
        old = dest / new.name
        if new.is_dir() and old.is_dir():
            aside = Path(tempfile.mkdtemp(prefix=f".{new.name}.", suffix=f"{TEMP_MARK}.old", dir=dest))
            os.rename(old, aside / new.name)
            os.rename(new, old)
            shutil.rmtree(aside, ignore_errors=True)
        elif new.is_dir():
            os.rename(new, old)
        else:
            real = destination(old)
            if real.exists():
                os.chmod(new, stat.S_IMODE(os.stat(real).st_mode))
            if real.parent == dest:
                os.replace(new, real)
            else:  # a symlink out of the directory: written through, atomically in the target's directory
                atomic_write(real, lambda t, src=new: shutil.copyfile(src, t))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXX.tmpSUFFIX``) and directories (``.NAME.XXXX.tmp``) an interrupted
    write left in ``directory``."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if not (p.name.startswith(".") and TEMP_MARK in p.name) or p.is_symlink():
            continue
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
        elif p.is_dir() and p.name.endswith(TEMP_MARK):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
