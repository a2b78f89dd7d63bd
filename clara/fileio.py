"""Atomic writes and checksummed manifests.

Nothing the project writes is ever half-written: files go to a temporary sibling and are
renamed into place; directories are assembled under a temporary name and swapped in whole, so
that at every instant the path holds the old directory or the new one (:func:`atomic_dir`).
A ``manifest.json`` lists the sha256 of every file so corruption is detected on load, and
:func:`writer_lock` keeps a second writer of the same directory out.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from clara.errors import CheckpointError

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets normal permissions
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    OS or file system cannot, and the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_directory(path: str | os.PathLike) -> bool:
    """Put back a directory that a crash left aside between the two renames of :func:`atomic_dir`'s
    fallback (``.NAME.*.old/old`` with nothing at ``path``); True if one was restored."""
    path = Path(path)
    if path.exists():
        return False
    for trash in sorted(path.parent.glob(f".{path.name}.*.old")):
        if (trash / "old").is_dir():
            os.replace(trash / "old", path)
            shutil.rmtree(trash, ignore_errors=True)
            _fsync_dir(path.parent)
            return True
    return False


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one atomic swap, so a reader or a
    crash at any instant finds the old directory or the new one at ``path``, never neither."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the final directory normal permissions
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # the swap left the old directory at tmp
        else:  # two renames; a crash between them is undone by recover_directory
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str = "directory") -> Iterator[None]:
    """Hold the one writer's lock of ``path`` (an OS lock on ``.NAME.lock`` beside it), or refuse at once
    naming the process that holds it. Readers take no lock. The lock goes with the process, crash included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CheckpointError(f"{path}: another writer ({holder}) is changing this {what}; "
                                  "run again when it has finished") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def write_manifest(directory: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write ``manifest.json`` with the sha256 and size of every file under ``directory``."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(directory).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"files": files, **(extra or {})}
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def verify_manifest(directory: str | os.PathLike) -> dict:
    """Check every file listed in ``manifest.json``; raise naming the first bad file."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST}; the directory is incomplete or not a checkpoint")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from None
    for rel, info in files.items():
        p = directory / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: listed in {MANIFEST} but missing")
        if p.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{p}: size {p.stat().st_size} != {info['bytes']} in {MANIFEST} (truncated?)")
        if sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"{p}: sha256 mismatch with {MANIFEST} (file is corrupt)")
    return manifest
