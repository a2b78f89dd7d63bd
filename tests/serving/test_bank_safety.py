"""Nothing lost: one writer per bank, and a bank path that always holds the old bank or the new one."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clara import fileio
from clara.errors import CheckpointError
from clara.serving.bank import MemoryBank, verify_bank
from clara.serving.bank_build import add_to_bank, build_bank
from clara.serving.protocols import HashingModel

REPO = Path(__file__).resolve().parents[2]


def write_corpus(path, prefix, n):
    rows = [{"id": f"{prefix}{i}", "title": f"{prefix} {i}", "text": f"{prefix} number {i} lies by river {i}."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_two_concurrent_adds_lose_nothing_and_corrupt_nothing(tmp_path):
    model = HashingModel(4, 32)
    for trial in range(20):
        bank = tmp_path / f"bank{trial}"
        build_bank(write_corpus(tmp_path / "base.jsonl", "base", 10), model, bank, progress=False)
        corpora = [write_corpus(tmp_path / f"c{w}.jsonl", f"t{trial}w{w}-", 30) for w in range(2)]
        start, outcome = threading.Barrier(2), {}

        def add(w):
            start.wait()
            try:
                outcome[w] = add_to_bank(bank, corpora[w], model, progress=False).count
            except CheckpointError as e:
                outcome[w] = e

        threads = [threading.Thread(target=add, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        verify_bank(bank)  # every file agrees with the manifest
        added = [w for w in range(2) if not isinstance(outcome[w], Exception)]
        refused = [w for w in range(2) if isinstance(outcome[w], Exception)]
        assert added, outcome
        for w in refused:
            assert "another writer" in str(outcome[w]) and str(bank) in str(outcome[w])
        ids = set(MemoryBank.open(bank).ids)
        assert len(ids) == 10 + 30 * len(added)  # no run's documents lost, none doubled
        for w in added:
            assert {f"t{trial}w{w}-{i}" for i in range(30)} <= ids


def test_a_second_writer_is_refused_with_a_clear_message(tmp_path):
    bank = tmp_path / "bank"
    build_bank(write_corpus(tmp_path / "base.jsonl", "base", 4), HashingModel(4, 32), bank, progress=False)
    with fileio.writer_lock(bank, "bank"):  # as a running `clara index add` holds it
        r = subprocess.run([sys.executable, "-m", "clara.cli", "index", "add", str(bank), "--corpus",
                            str(write_corpus(tmp_path / "more.jsonl", "more", 3)), "--model", "hashing:m=4,h=32"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (f"error: {bank}: another writer (pid {os.getpid()}) is changing "
                                                 "this bank; run again when it has finished")
    assert MemoryBank.open(bank).info.count == 4


def test_the_bank_path_is_never_empty_during_a_swap(tmp_path, monkeypatch):
    path = tmp_path / "bank"
    build_bank(write_corpus(tmp_path / "a.jsonl", "a", 3), HashingModel(4, 32), path, progress=False)
    gaps = []
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        gaps.append(not path.exists())

    monkeypatch.setattr(fileio.os, "replace", replace)
    for n in (5, 7):
        build_bank(write_corpus(tmp_path / "b.jsonl", "b", n), HashingModel(4, 32), path, progress=False)
        assert MemoryBank.open(path).info.count == n
    assert not any(gaps)


def test_a_crash_between_the_fallback_renames_is_recovered(tmp_path, monkeypatch):
    path = tmp_path / "bank"
    build_bank(write_corpus(tmp_path / "a.jsonl", "a", 3), HashingModel(4, 32), path, progress=False)
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if Path(dst).name == "old":  # the old bank went aside; the new one never came in
            raise KeyboardInterrupt("killed between the two renames")

    monkeypatch.setattr(fileio.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_bank(write_corpus(tmp_path / "b.jsonl", "b", 5), HashingModel(4, 32), path, progress=False)
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert not path.exists()  # the moment the kill left: the old bank aside, nothing at the path
    assert MemoryBank.open(path).info.count == 3  # the next command puts the old bank back
    build_bank(write_corpus(tmp_path / "b.jsonl", "b", 5), HashingModel(4, 32), path, progress=False)
    assert MemoryBank.open(path).info.count == 5 and not list(tmp_path.glob(".bank.*.old"))
