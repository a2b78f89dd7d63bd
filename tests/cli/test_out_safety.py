"""`--out` never destroys what it did not make (issue 29, row 3).

Each command refuses an existing output path that holds another kind of output (a training run, a
world, a bank, a regular file where a directory goes, a directory where a file goes, a non-empty
unrelated directory), in one line naming the path and what it holds, and leaves it byte for byte as
it was; it replaces its own kind only with --overwrite. What a path holds is told in one place,
clara.fileio.recognise_output, checked here on real outputs.
"""

import hashlib
import json
from pathlib import Path

import pytest

from clara.cli.main import main
from clara.fileio import (
    BACKBONE,
    BANK,
    BANK_WORK,
    CHECKPOINT,
    TRAINING_RUN,
    WORLD,
    atomic_dir,
    claim_output,
    recognise_output,
)
from clara.errors import OutputError

HASHING = "hashing:m=4,h=32"


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) by relative name, with its sha256."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def corpus(path: Path, ids: str) -> Path:
    path.write_text("".join(json.dumps({"id": i, "title": i.upper(), "text": f"About {i}."}) + "\n" for i in ids))
    return path


@pytest.fixture
def training_run(tmp_path):
    """A real training run of the shared loop: config.yaml, metrics.jsonl, two checkpoints."""
    import torch

    from clara.config import TrainConfig
    from clara.training import ResumableBatches, Trainer

    data = [(torch.randn(3), torch.randn(())) for _ in range(8)]
    model = torch.nn.Linear(3, 1)

    def loss_fn(m, batch):
        x, y = torch.stack([a for a, _ in batch]), torch.stack([b for _, b in batch])
        return ((m(x).squeeze(-1) - y) ** 2).mean(), {}

    cfg = TrainConfig(max_steps=2, batch_size=2, save_every=1, log_every=1)
    Trainer(model, cfg, tmp_path / "run", loss_fn, ResumableBatches(data, 2, list)).train()
    run = tmp_path / "run"
    assert (run / "checkpoints").is_dir() and (run / "metrics.jsonl").is_file()
    return run


def test_index_build_refuses_a_training_run_and_leaves_it_intact(training_run, tmp_path, capsys):
    before = snapshot(training_run)
    docs = corpus(tmp_path / "docs.jsonl", "abc")
    for extra in ([], ["--overwrite"]):  # not even --overwrite replaces another command's output
        argv = ["index", "build", "--corpus", str(docs), "--model", HASHING, "--out", str(training_run), "--no-progress"]
        assert main(argv + extra) == 1
        assert one_error_line(capsys) == (f"error: {training_run}: is a training run, not a memory bank; refusing "
                                          "to replace it: choose another path")
    assert snapshot(training_run) == before
    assert not (tmp_path / "run.work").exists()


def test_index_build_replaces_a_bank_only_with_overwrite(tmp_path, capsys):
    from clara.serving.bank import MemoryBank

    bank = tmp_path / "bank"
    build = ["index", "build", "--model", HASHING, "--out", str(bank), "--no-progress", "--corpus"]
    assert main(build + [str(corpus(tmp_path / "a.jsonl", "abc"))]) == 0
    capsys.readouterr()
    before = snapshot(bank)
    bigger = str(corpus(tmp_path / "b.jsonl", "abcdef"))
    assert main(build + [bigger]) == 1
    assert one_error_line(capsys).endswith(f"{bank}: already holds a memory bank; pass --overwrite to replace it")
    assert snapshot(bank) == before
    assert main(build + [bigger, "--overwrite"]) == 0
    assert MemoryBank.open(bank, use_gpu=False).info.count == 6


def test_index_build_never_clears_a_work_directory_it_did_not_make(tmp_path, capsys):
    work = tmp_path / "bank.work"  # where build keeps its resumable shards
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    docs = corpus(tmp_path / "docs.jsonl", "ab")
    assert main(["index", "build", "--corpus", str(docs), "--model", HASHING, "--out", str(tmp_path / "bank"),
                 "--no-progress"]) == 1  # fmt: skip
    assert one_error_line(capsys).startswith(f"error: {work}: is a directory of 1 other entries (notes.txt), not a "
                                             "bank work directory")
    assert (work / "notes.txt").read_text() == "mine" and not (tmp_path / "bank").exists()


def test_world_refuses_a_non_empty_other_directory(tmp_path, capsys):
    other = tmp_path / "notes"
    (other / "sub").mkdir(parents=True)
    (other / "a.txt").write_text("keep")
    (other / "sub" / "b.txt").write_text("keep too")
    before = snapshot(other)
    for extra in ([], ["--overwrite"]):
        assert main(["world", "--seed", "1", "--entities", "30", "--out", str(other), *extra]) == 1
        assert one_error_line(capsys) == (f"error: {other}: is a directory of 2 other entries (a.txt, sub), not a "
                                          "world corpus; refusing to replace it: choose another path")
    assert snapshot(other) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["world", "--seed", "1", "--entities", "30", "--out", str(empty)]) == 0  # an empty directory is free
    assert recognise_output(empty) is WORLD


def test_world_replaces_a_world_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "w"
    seed = lambda: json.loads((out / "manifest.json").read_text())["seed"]  # noqa: E731
    assert main(["world", "--seed", "1", "--entities", "30", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["world", "--seed", "2", "--entities", "30", "--out", str(out)]) == 1
    assert one_error_line(capsys) == f"error: {out}: already holds a world corpus; pass --overwrite to replace it"
    assert seed() == 1
    assert main(["world", "--seed", "2", "--entities", "30", "--out", str(out), "--overwrite"]) == 0
    assert seed() == 2


TINY = ["backbone", "tiny", "--vocab-size", "300", "--hidden", "16", "--layers", "1", "--heads", "2"]


def test_backbone_tiny_refuses_a_regular_file(tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_bytes(b"not a backbone")
    for extra in ([], ["--overwrite"]):
        assert main(TINY + ["--out", str(target), *extra]) == 1
        assert one_error_line(capsys) == (f"error: {target}: is a regular file (14 bytes), not a backbone; refusing "
                                          "to replace it: choose another path")
    assert target.read_bytes() == b"not a backbone"


def test_backbone_tiny_replaces_a_backbone_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "tiny"
    info = lambda: json.loads((out / "clara_backbone.json").read_text())  # noqa: E731
    assert main(TINY + ["--out", str(out), "--seed", "0"]) == 0
    capsys.readouterr()
    assert main(TINY + ["--out", str(out), "--seed", "1"]) == 1
    assert one_error_line(capsys) == f"error: {out}: already holds a backbone; pass --overwrite to replace it"
    assert info()["seed"] == 0
    assert main(TINY + ["--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert info()["seed"] == 1


def test_training_stages_refuse_another_commands_output(tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["world", "--seed", "1", "--entities", "30", "--out", str(world)]) == 0
    before = snapshot(world)
    capsys.readouterr()
    # each is refused before any model or data is read: nothing here could be trained
    for argv in (["pretrain", "train", "--world-fresh", "--out", str(world)],
                 ["pretrain", "instruct", "--init", str(tmp_path / "none"), "--out", str(world)],
                 ["joint", f"out_dir={world}"],
                 ["rl", f"out_dir={world}"]):  # fmt: skip
        assert main(argv) == 1, argv
        assert one_error_line(capsys) == (f"error: {world}: is a world corpus, not a training run; refusing to "
                                          "replace it: choose another path")
    for argv, kind in ((["pretrain", "sweep", "--crs", "4", "--world-fresh", "--eval-world", str(world)],
                        "compression-rate sweep"),
                       (["demo"], "demo output")):  # fmt: skip
        assert main(argv + ["--out", str(world)]) == 1, argv
        assert one_error_line(capsys).startswith(f"error: {world}: is a world corpus, not a {kind};")
    assert snapshot(world) == before


def test_reader_never_clears_a_work_directory_it_did_not_make(training_run, tiny_backbone, tmp_path, capsys):
    # the reader's work directory is a training run of its own recipe; another run (or anything else) there stays
    world = tmp_path / "world"
    assert main(["world", "--seed", "1", "--entities", "30", "--out", str(world)]) == 0
    capsys.readouterr()
    runs = {p: snapshot(p) for p in (training_run, world)}
    for work, says in ((training_run, "holds a training run of another recipe or source; refusing to clear it"),
                       (world, "is a world corpus, not a training run")):  # fmt: skip
        assert main(["backbone", "reader", "--backbone", str(tiny_backbone), "--out", str(tmp_path / "reader"),
                     "--steps", "1", "--work-dir", str(work)]) == 1  # fmt: skip
        assert one_error_line(capsys).startswith(f"error: {work}: {says}")
    assert {p: snapshot(p) for p in runs} == runs and not (tmp_path / "reader").exists()


def test_file_outputs_refuse_directories_and_replace_files_only_with_overwrite(tmp_path, capsys):
    docs = corpus(tmp_path / "docs.jsonl", "ab")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.txt").write_text("keep")
    convert = ["data", "convert", str(docs), "--kind", "documents"]
    assert main(convert[:3] + [str(folder)] + convert[3:]) == 1
    assert one_error_line(capsys).startswith(f"error: {folder}: is a directory of 1 other entries (x.txt), not a file")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    assert main(convert[:3] + [str(out)] + convert[3:]) == 1
    assert one_error_line(capsys) == f"error: {out}: already exists; pass --overwrite to replace it"
    assert out.read_text() == "precious\n"
    assert main(convert[:3] + [str(out)] + convert[3:] + ["--overwrite"]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b"]
    converted = out.read_text()
    assert main(["data", "mix", f"{docs}:qa:1", "--out", str(out)]) == 1  # refused before the parts are read
    assert one_error_line(capsys) == f"error: {out}: already exists; pass --overwrite to replace it"
    assert out.read_text() == converted
    # an evaluation's --out is claimed before the (missing) model is touched
    assert main(["eval", "reading", "--backbone", str(tmp_path / "none"), "--world", str(tmp_path / "none"),
                 "--out", str(folder)]) == 1  # fmt: skip
    assert "not a file" in one_error_line(capsys)
    # synthesis appends to its own file, so an existing file is its resume point, but a directory is refused
    assert main(["pretrain", "synth", "--corpus", str(docs), "--teacher", "cloze", "--out", str(folder)]) == 1
    assert "not a file" in one_error_line(capsys)
    assert snapshot(folder) == {"x.txt": hashlib.sha256(b"keep").hexdigest()}


def test_outputs_are_recognised_by_what_their_commands_write(training_run, tiny_backbone, tmp_path):
    from clara.serving.bank_build import build_bank
    from clara.serving.protocols import load_model
    from clara.world import generate_world, write_world

    assert recognise_output(training_run) is TRAINING_RUN
    assert recognise_output(next((training_run / "checkpoints").glob("step-*"))) is CHECKPOINT
    assert recognise_output(tiny_backbone) is BACKBONE
    assert recognise_output(write_world(generate_world(1, 30), tmp_path / "w")) is WORLD
    build_bank(corpus(tmp_path / "d.jsonl", "ab"), load_model(HASHING, None), tmp_path / "bank", progress=False)
    assert recognise_output(tmp_path / "bank") is BANK
    (tmp_path / "bank.work").mkdir()
    (tmp_path / "bank.work" / "job.json").write_text("{}")
    assert recognise_output(tmp_path / "bank.work") is BANK_WORK
    # a run resumes into itself: claiming it is allowed without --overwrite, and leaves it as it was
    before = snapshot(training_run)
    assert claim_output(training_run, TRAINING_RUN) == training_run
    assert snapshot(training_run) == before


def test_atomic_dir_never_swaps_a_directory_in_for_a_file(tmp_path):
    target = tmp_path / "f"
    target.write_text("keep")
    with pytest.raises(OutputError, match="is a regular file"):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("new")
    assert target.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
