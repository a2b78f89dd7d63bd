"""`clara world`: help, output files, errors, atomic output, reading back."""

import json
import subprocess
import sys

import pytest

from clara.cli.main import main
from clara.errors import CheckpointError, DataError
from clara.fileio import verify_manifest
from clara.world import generate_world, load_world, write_world
from clara.world import writer as writer_module


def test_help_lists_every_flag():
    r = subprocess.run([sys.executable, "-m", "clara.cli", "world", "--help"], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for flag in ("--seed", "--entities", "--out", "--candidates", "--max-words"):
        assert flag in r.stdout


def test_cli_writes_world_and_summary(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["world", "--seed", "3", "--entities", "40", "--out", str(out), "--candidates", "10"]) == 0
    printed = capsys.readouterr().out
    assert "single_hop" in printed and "test_unseen" in printed
    manifest = verify_manifest(out)
    assert manifest["seed"] == 3 and manifest["entities"] == 40 and manifest["candidates"] == 10
    assert manifest["counts"]["documents"] == 40
    for split in ("train", "dev", "test", "test_unseen"):
        assert (out / "questions" / f"{split}.jsonl").is_file()
    first = json.loads((out / "questions" / "train.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"id", "question", "answers", "type", "gold_ids", "doc_ids", "pos_index", "entity_ids"}
    assert len(first["doc_ids"]) == 10


def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clara.cli", "world", "--entities", "5", "--out", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: world.entities") and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    world = generate_world(seed=0, entities=30)
    out = tmp_path / "w"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer_module, "write_manifest", boom)  # after the data files are written
    with pytest.raises(OSError):
        write_world(world, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_failed_rewrite_keeps_the_old_world(tmp_path, monkeypatch):
    out = write_world(generate_world(seed=0, entities=30), tmp_path / "w")
    before = (out / "documents.jsonl").read_bytes()
    monkeypatch.setattr(writer_module, "write_manifest", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        write_world(generate_world(seed=1, entities=30), out)
    assert (out / "documents.jsonl").read_bytes() == before


def test_load_world_round_trip_and_errors(tmp_path):
    world = generate_world(seed=2, entities=40)
    out = write_world(world, tmp_path / "w")
    loaded = load_world(out)
    assert loaded.documents == world.documents and loaded.facts == world.facts
    assert loaded.questions == world.questions and loaded.meta == world.meta

    path = out / "questions" / "dev.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(CheckpointError, match="dev.jsonl"):
        load_world(out)
    with pytest.raises(DataError, match=r"dev\.jsonl:\d+: not valid JSON"):
        load_world(out, verify=False)
    with pytest.raises(DataError, match="not a directory"):
        load_world(tmp_path / "missing")
