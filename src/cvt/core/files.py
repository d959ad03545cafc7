"""The one way this library writes a file: checked first, written aside, published by an atomic rename.

Rules (every artefact: weights, checkpoints, exports, reports, plots):

* **Only regular files are replaced.** A destination that is a directory, a device, a FIFO or a socket is refused
  with one line naming it; nothing is written.
* **Symlinks are written through.** A destination that is a symbolic link keeps being that link: the file it
  points to is replaced (atomically, in the target's directory). The link itself is never replaced by a file.
* **Atomic.** The bytes go to a temporary file beside the destination (``.NAME.XXXX.tmpSUFFIX``), are fsynced,
  then renamed over it: a reader sees the old file or the new one, never half of one. On any failure the
  temporary file is removed, and directories created for the write are removed again (no empty folders left).
* **Permissions** follow the umask for new files (``0o666 & ~umask``, as ``open()`` would give), and an existing
  destination keeps its mode.
* **Errors** are one line naming the destination (never the temporary file) and saying why: no space left,
  read-only file system, permission denied, file-size limit ...: :class:`~cvt.core.errors.WriteError`.
* :func:`check_writable` runs the same checks up front, so a long job (an evaluation, a training run, an export)
  can refuse an unusable output path before it starts; :func:`remove_stale_temps` cleans the temporary files of
  an interrupted run.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

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


def destination(path: str | os.PathLike[str]) -> Path:
    """The file that a write to ``path`` replaces: ``path``, or the target of a symlink. Raises :class:`WriteError`
    for anything that is not (or would not be) a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)})") from None
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
    parent = dest.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(f"{path}: cannot write ({parent} is not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(parent) else "permission denied"
        raise WriteError(f"{path}: cannot write ({why}: {parent})")
    if dest.exists() and not os.access(dest, os.W_OK) and not os.access(parent, os.W_OK):
        raise WriteError(f"{path}: cannot write (permission denied)")
    return dest


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then fsync and rename ``tmp`` over ``path`` (see the module docstring for the rules).

    ``tmp`` keeps the destination's suffix last (some writers, e.g. ``torch.export.save``, insist on it).
    Returns ``path``. Raises :class:`WriteError` naming ``path`` for file-system failures; an exception raised by
    ``write`` itself propagates unchanged (after the clean-up).
    """
    path = Path(path)
    dest = destination(path)
    created: list[Path] = []
    tmp: Path | None = None
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
        os.replace(tmp, dest)
        tmp = None
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({reason(e)})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            for d in reversed(created):  # deepest first; only if still empty
                try:
                    d.rmdir()
                except OSError:
                    break
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted write left in ``directory`` (``.NAME.XXXX.tmpSUFFIX``)."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if p.name.startswith(".") and TEMP_MARK in p.name and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
