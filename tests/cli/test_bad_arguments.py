"""Careless command lines and a full disk: one line naming what is wrong, never a traceback."""

import errno
import os

import pytest

from clara.cli.main import main


@pytest.mark.parametrize("argv, message", [
    (["index", "build", "--corpus", "c", "--model", "hashing:m=4,h=32", "--out", "b", "--batch-size", "0"],
     "argument --batch-size: 0 is below 1"),
    (["index", "build", "--corpus", "c", "--model", "hashing:m=4,h=32", "--out", "b", "--shard-docs", "0"],
     "argument --shard-docs: 0 is below 1"),
    (["backbone", "tiny", "--out", "x", "--hidden", "0"], "argument --hidden: 0 is below 1"),
    (["backbone", "tiny", "--out", "x", "--layers", "two"], "argument --layers: 'two' is not a whole number"),
    (["serve", "--bank", "b", "--model", "hashing:m=4,h=32", "--max-batch", "-3"], "argument --max-batch: -3 is below 1"),
])
def test_bad_numbers_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the checkout
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


@pytest.mark.parametrize("wait", ["-1", "inf", "1e9", "nan"])
def test_max_wait_is_bounded(tmp_path, wait, capsys):
    # refused before the bank or the model is touched (neither exists here)
    assert main(["serve", "--bank", str(tmp_path / "none"), "--model", "hashing:m=4,h=32", "--max-wait-ms", wait]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: server setting max_wait_ms=") and "between 0 and 1000 ms" in err
    assert len(err.splitlines()) == 1


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    from clara.serving import bank_build

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "bank.work" / "shard-000000.npy"))

    monkeypatch.setattr(bank_build, "compress_to_shards", full)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"id": "a", "title": "A", "text": "Alpha."}\n')
    code = main(["index", "build", "--corpus", str(corpus), "--model", "hashing:m=4,h=32", "--out",
                 str(tmp_path / "bank"), "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'bank.work' / 'shard-000000.npy'}: no space left on device (errno {errno.ENOSPC})")
    assert not (tmp_path / "bank").exists()
