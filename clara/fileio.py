"""Atomic writes and checksummed manifests.

Nothing the project writes is ever half-written: files go to a temporary sibling and are
renamed into place; directories are assembled under a temporary name and swapped in whole, so
that at every instant the path holds the old directory or the new one (:func:`atomic_dir`).
A ``manifest.json`` lists the sha256 of every file so corruption is detected on load, and
:func:`writer_lock` keeps a second writer of the same directory out.

Nothing a command writes replaces what it did not make: :func:`claim_output` recognises what an
output path holds (a training run, a bank, a world, a backbone, adapters, a plain file...) by the
files each writer always puts there, and refuses anything but the command's own kind, which it
replaces only with ``--overwrite`` (or reuses, where the command resumes or appends).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from clara.errors import CheckpointError, OutputError

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


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust (safetensors) reports an errno


def _nearly_full(path: Path, least: int = 1 << 20) -> bool:
    """True when the file system holding ``path`` has less than ``least`` bytes left for this user."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize < least
    return False


def named_write_error(e: BaseException, path: str | os.PathLike) -> OSError | None:
    """A failed write as an ``OSError`` naming ``path`` and its cause, where the error named neither; else None.

    Writers report a full disk in several ways: a file object's ``write`` raises an errno with no file name;
    numpy's ``tofile`` says 'N requested and M written' with no errno; ``torch.save`` raises ``RuntimeError:
    [enforce fail at inline_container.cc:...]``; safetensors says '(os error 28)'. The last gives the errno;
    the two without one are a full disk where the file system is (nearly) full, an I/O error otherwise."""
    path = Path(path)
    if isinstance(e, OSError) and e.errno is not None:
        return None if e.filename is not None else OSError(e.errno, os.strerror(e.errno), str(path))
    if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    if (found := _OS_ERROR_IN_TEXT.search(str(e))) is not None:
        code = int(found.group(1))
    elif isinstance(e, OSError) or (isinstance(e, RuntimeError) and "inline_container" in str(e)):
        code = errno.ENOSPC if _nearly_full(path) else errno.EIO
    else:
        return None
    said = str(e).splitlines()[0][:200] if str(e) else ""
    return OSError(code, f"{os.strerror(code)} ({said})" if said else os.strerror(code), str(path))


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
    except BaseException as e:
        named = named_write_error(e, path)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if named is not None:
            raise named from e
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
    if os.path.lexists(path) and not path.is_dir():  # never swap a directory in for a file
        raise OutputError(f"{path}: is {describe_path(path)}, not a directory; refusing to replace it")
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
    except BaseException as e:
        named = named_write_error(e, path)  # before the cleanup frees the space a full disk is judged by
        shutil.rmtree(tmp, ignore_errors=True)
        if named is not None:
            raise named from e
        raise


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str = "directory") -> Iterator[None]:
    """Hold the one writer's lock of ``path`` (an OS lock on ``.NAME.lock`` beside it), or refuse at once
    naming the process that holds it. Readers take no lock. The lock goes with the process, crash included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    try:
        lock_file = open(lock_path, "a+", encoding="utf-8")
    except OSError as e:  # a read-only file system or directory: say so of the path the user named
        raise OSError(e.errno, f"{e.strerror} (cannot create its writer's lock {lock_path.name})", str(path)) from e
    with lock_file as f:
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


# ---------------------------------------------------------------- what an output path holds


def _manifest_of(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _all_of(*names: str) -> Callable[[Path], bool]:
    return lambda d: all((d / n).exists() for n in names)


def _any_of(*names: str) -> Callable[[Path], bool]:
    return lambda d: any((d / n).exists() for n in names)


@dataclass(frozen=True)
class OutputKind:
    """What a command writes at its output path. ``recognise`` tells a directory of this kind by the files its
    writer always puts there; ``file`` marks a one-file output. ``reusable``: the command writes into an existing
    one of its own kind without ``--overwrite`` (a training run resumes, synthesis appends, a sweep continues)."""

    name: str
    recognise: Callable[[Path], bool] = lambda d: False
    file: bool = False
    reusable: bool = False


# The markers are the file names the writers use (clara.model.storage.MODEL_INFO, clara.serving.bank.MEMORY_FILE,
# clara.model.backbone.BACKBONE_INFO...): this module sits below them. tests/test_outputs.py recognises real ones.
CHECKPOINT = OutputKind("training checkpoint", _all_of("trainer_state.json"))
RELEASE = OutputKind("adapter release", lambda d: (d / "clara_model.json").is_file() and _manifest_of(d).get("release") is True)
ADAPTERS = OutputKind("adapters directory", _all_of("clara_model.json"))
BANK = OutputKind("memory bank", _all_of("memory.bin", MANIFEST))
WORLD = OutputKind("world corpus", _all_of("documents.jsonl", "facts.jsonl", "questions"))
BACKBONE = OutputKind("backbone", _all_of("clara_backbone.json"))
BANK_WORK = OutputKind("bank work directory", _all_of("job.json"), reusable=True)
SWEEP = OutputKind("compression-rate sweep", lambda d: (d / "sweep.json").is_file() or any(d.glob("cr-*")), reusable=True)
TRAINING_RUN = OutputKind("training run", _any_of("checkpoints", "metrics.jsonl", "config.yaml"), reusable=True)
DEMO = OutputKind("demo output", _any_of("report.md", "backbones"), reusable=True)
FILE = OutputKind("file", file=True)
APPENDED_FILE = OutputKind("file", file=True, reusable=True)  # appended to, and resumed from (`pretrain synth`)
KINDS = (CHECKPOINT, RELEASE, ADAPTERS, BANK, WORLD, BACKBONE, BANK_WORK, SWEEP, TRAINING_RUN, DEMO)  # most specific first


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def recognise_output(path: str | os.PathLike) -> OutputKind | None:
    """The kind of output the directory ``path`` holds, or None (missing, a file, empty or unrecognised)."""
    path = Path(path)
    if not path.is_dir():
        return None
    return next((kind for kind in KINDS if kind.recognise(path)), None)


def describe_path(path: str | os.PathLike) -> str:
    """What is at ``path``, in words: 'a training run', 'a regular file (12 bytes)', 'an empty directory'..."""
    path = Path(path)
    if not os.path.lexists(path):
        return "nothing"
    if not path.exists():
        return "a broken symbolic link"
    if path.is_file():
        return f"a regular file ({path.stat().st_size} bytes)"
    if not path.is_dir():
        return "a special file"
    if (kind := recognise_output(path)) is not None:
        return _a(kind.name)
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return "an empty directory"
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"a directory of {len(entries)} other entries ({shown})"


def claim_output(path: str | os.PathLike, kind: OutputKind, *, overwrite: bool = False) -> Path:
    """Check, before any work, that a command may write ``kind`` at ``path``; else raise :class:`OutputError`,
    one line naming the path and what it holds.

    Free: nothing there, or an empty directory for a directory kind. The command's own kind: reused where
    ``kind.reusable`` (it resumes or appends), else replaced only with ``overwrite``. Anything else is refused,
    ``overwrite`` or not: a command never replaces what it did not make."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    if kind.file:
        own = path.is_file()
    elif path.is_dir() and not any(path.iterdir()):
        return path
    else:
        own = recognise_output(path) is kind
    if own:
        if kind.reusable or overwrite:
            return path
        what = "already exists" if kind.file else f"already holds {_a(kind.name)}"
        raise OutputError(f"{path}: {what}; pass --overwrite to replace it")
    what = describe_path(path)
    if kind.file and recognise_output(path) is not None:
        what = f"a directory ({what})"  # 'is a directory (a world corpus), not a file'
    raise OutputError(f"{path}: is {what}, not {_a(kind.name)}; refusing to replace it: choose another path")
