"""Writing files that a crash, a full disk or a concurrent writer can never leave half-done.

Everything ai-vmm writes goes first into a *staging directory*: a uniquely named, hidden sibling
of the destination (``.ai-vmm-stage-XXXXXXXX``), on the same filesystem, so that the final step
is one atomic rename. The staging name is random, never derived from the destination's name,
so two writers never share one and a path such as ``dl/project/`` is never mistaken for the
staging area of ``dl/project.zip``.

A process that is killed (SIGKILL, power loss) leaves its staging directory behind. Each live
staging directory is held under an exclusive ``flock`` by its writer; the kernel drops that lock
when the process dies. ``sweep_stale`` removes the leftovers: entries of ours that no live
process holds and that are older than an hour (the hour also covers filesystems where locks do
not work). The next compile into the same place calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STAGE_PREFIX = ".ai-vmm-stage-"
"""A directory an artifact or cache entry is being written into."""
TRASH_PREFIX = ".ai-vmm-trash-"
"""What an artifact replaced, on its way out."""
BUILD_PREFIX = "ai-vmm-build-"
"""A compile's working directory under ``$TMPDIR``."""
UNPACK_PREFIX = "ai-vmm-artifact-"
"""A zip artifact unpacked under ``$TMPDIR`` while it is loaded."""
STALE_AFTER_S = 3600.0
"""Leftovers older than this, that no live process holds, are swept."""

try:
    import fcntl
except ImportError:  # Windows: no flock; the age rule alone decides
    fcntl = None  # type: ignore[assignment]


class HeldDirectory:
    """A directory this process holds an exclusive lock on until ``release``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        if fcntl is not None:
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def hold_new_directory(parent: Path, prefix: str) -> HeldDirectory:
    """Create a uniquely named directory in ``parent`` and hold its lock."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        return HeldDirectory(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _held_by_someone(path: Path) -> tuple[bool, int | None]:
    """Whether a live process holds ``path``; if not, a descriptor holding it now (or None)."""
    if fcntl is None:
        return False, None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True, None  # unreadable: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return True, None
    return False, fd


def sweep_stale(
    directory: Path,
    prefixes: tuple[str, ...] = (STAGE_PREFIX, TRASH_PREFIX),
    max_age_s: float = STALE_AFTER_S,
) -> list[Path]:
    """Remove leftovers of ours in ``directory`` that no live process holds and that are old.

    Returns the paths removed. Never raises: sweeping is housekeeping, not the user's job.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        path = Path(entry.path)
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < max_age_s:
                continue
        except OSError:
            continue
        held, fd = _held_by_someone(path)
        if held:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            if not path.exists():
                removed.append(path)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (a file or a directory) to the disk."""
    if root.is_file():
        _fsync_path(root)
        return
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder) / name)
        fsync_directory(Path(folder))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) where the platform allows it."""
    if sys.platform == "win32":
        return
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        _fsync_path(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOENT,):
        raise FileNotFoundError(code, os.strerror(code), str(second))
    return False  # EINVAL / ENOSYS / EXDEV: this filesystem cannot swap


def replace_path(source: Path, destination: Path) -> None:
    """Move ``source`` (a file or directory) onto ``destination``, replacing what is there.

    Where the kernel can swap two paths atomically, ``destination`` is never missing, not even
    for an instant; elsewhere what was there moves aside first. Concurrent writers to the same
    destination each land whole; the last one stays.
    """
    source, destination = Path(source), Path(destination)
    for _attempt in range(100):
        if not (destination.exists() or destination.is_symlink()):
            try:
                _rename_onto_nothing(source, destination)
                return
            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                continue  # another writer landed first: replace theirs
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue
        if source.is_file() and not destination.is_dir():
            os.replace(source, destination)  # atomic for files
            return
        try:
            swapped = _exchange(source, destination)
        except FileNotFoundError:
            continue  # the destination vanished meanwhile
        if swapped:
            # ``source`` now holds what was at ``destination``.
            _remove(source)
            return
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=destination.parent))
        try:
            os.replace(destination, trash / "old")
        except FileNotFoundError:
            shutil.rmtree(trash, ignore_errors=True)
            continue
        try:
            _rename_onto_nothing(source, destination)
        except OSError:
            shutil.rmtree(trash, ignore_errors=True)
            continue
        shutil.rmtree(trash, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, "other writers kept replacing it", str(destination))


def _rename_onto_nothing(source: Path, destination: Path) -> None:
    if source.is_dir():
        # os.rename onto an existing empty directory succeeds on POSIX; that is someone
        # else's directory appearing meanwhile, so refuse it and go round again.
        if destination.exists():
            raise FileExistsError(errno.EEXIST, "appeared meanwhile", str(destination))
        os.rename(source, destination)
    else:
        os.replace(source, destination)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def staging_directory(parent: Path) -> Iterator[Path]:
    """A fresh, locked, hidden directory in ``parent``; removed on exit unless renamed away.

    Stale staging directories in ``parent`` are swept first.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent)
    held = hold_new_directory(parent, STAGE_PREFIX)
    try:
        yield held.path
    finally:
        held.release()
        if held.path.exists():
            shutil.rmtree(held.path, ignore_errors=True)


@contextlib.contextmanager
def build_directory(prefix: str = BUILD_PREFIX) -> Iterator[Path]:
    """A compile's working directory under ``$TMPDIR``, locked while it lives.

    Working directories that killed compiles left behind are swept first.
    """
    parent = Path(tempfile.gettempdir())
    sweep_stale(parent, (prefix,))
    held = hold_new_directory(parent, prefix)
    try:
        yield held.path
    finally:
        held.release()
        shutil.rmtree(held.path, ignore_errors=True)


def os_error_text(exc: OSError) -> str:
    """One line naming the path and the cause of a filesystem error (``shutil.Error`` too)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        problems = exc.args[0]
        if problems and isinstance(problems[0], tuple) and len(problems[0]) == 3:
            _src, dst, why = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return " ".join(f"{dst}: {why}{more}".split())
    cause = exc.strerror or str(exc) or exc.__class__.__name__
    if exc.filename is None:
        return " ".join(str(cause).split())
    text = f"{_name(exc.filename)}: {cause}"
    if exc.filename2 is not None:
        text = f"{_name(exc.filename)} -> {_name(exc.filename2)}: {cause}"
    return " ".join(text.split())


def _name(filename: object) -> str:
    return os.fsdecode(filename) if isinstance(filename, str | bytes) else str(filename)
