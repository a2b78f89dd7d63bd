"""The shared loop in-process: learning, accumulation, schedule, NaN guard, checkpoints, resume."""

import logging

import pytest
import torch
from safetensors.torch import load_file

from clara.config import LRSchedule, TrainConfig
from clara.errors import CheckpointError, ClaraError
from clara.fileio import verify_manifest
from clara.training import lr_multiplier, read_metrics


def params_of(trainer):
    return {n: p.detach().clone() for n, p in trainer.module.named_parameters()}


def test_loss_falls_and_only_trainable_params_are_checkpointed(toy, tmp_path, one_thread):
    trainer = toy.make_trainer(tmp_path, {"max_steps": 40, "schedule": "constant", "save_every": 0}, dropout=0.0)
    result = trainer.train()
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    saved = load_file(str(tmp_path / "checkpoints/step-000040/trainable.safetensors"))
    assert set(saved) == {"inp.weight", "inp.bias", "out.weight", "out.bias"}  # not the frozen one
    assert torch.equal(saved["out.weight"], trainer.module.out.weight.detach())
    assert (tmp_path / "checkpoints/latest").read_text().strip() == "step-000040"
    assert (tmp_path / "config.yaml").read_text().startswith(f"# config hash: {trainer.config_hash}")


def test_grad_accumulation_matches_one_big_batch(toy, tmp_path, one_thread):
    fields = {"max_steps": 3, "save_every": 0, "max_grad_norm": 0.0}
    big = toy.make_trainer(tmp_path / "big", {**fields, "batch_size": 8}, dropout=0.0)
    big.train()
    small = toy.make_trainer(tmp_path / "small", {**fields, "batch_size": 4, "grad_accum": 2}, dropout=0.0)
    small.train()
    for name, p in params_of(big).items():
        torch.testing.assert_close(params_of(small)[name], p, rtol=1e-5, atol=1e-6)
    assert small.batches.state_dict()["position"] == 6  # 3 steps x 2 micro-batches


def test_lr_schedule_warmup_then_decay():
    base = dict(max_steps=10, warmup_steps=2)
    for schedule, expected_end in [(LRSchedule.CONSTANT, 1.0), (LRSchedule.LINEAR, 0.0), (LRSchedule.COSINE, 0.0)]:
        f = lr_multiplier(TrainConfig(schedule=schedule, **base))
        assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0]
        assert f(10) == pytest.approx(expected_end, abs=1e-12)
    f = lr_multiplier(TrainConfig(schedule=LRSchedule.COSINE, **base))
    assert f(6) == pytest.approx(0.5)  # half-way through the decay


def test_bf16_autocast_trains(toy, tmp_path):
    result = toy.make_trainer(tmp_path, {"max_steps": 3, "precision": "bf16", "save_every": 0}).train()
    assert all(x is not None and x == x for x in result.losses)


def test_precision_defaults_to_auto_and_the_trainer_resolves_it_for_this_cpu(toy, tmp_path, monkeypatch):
    from clara import devices
    from clara.config import Precision

    assert TrainConfig().precision is Precision.AUTO
    monkeypatch.delenv(devices.PRECISION_ENV, raising=False)
    for native, expected in ((False, Precision.FP32), (True, Precision.BF16)):
        monkeypatch.setattr(devices, "native_bf16", lambda device, native=native: "amx" if native else None)
        trainer = toy.make_trainer(tmp_path / expected.value, {"max_steps": 1, "save_every": 0})
        trainer.train()
        assert trainer.precision is expected


def test_nan_step_is_skipped_and_parameters_unchanged(toy, tmp_path, one_thread):
    snapshots = {}
    trainer = toy.make_trainer(tmp_path, {"max_steps": 5}, nan_steps=[3],
                               on_step=lambda step, record: snapshots.__setitem__(step, params_of(trainer)))
    result = trainer.train()
    for name, p in snapshots[2].items():
        assert torch.equal(snapshots[3][name], p), f"{name} changed on a skipped step"
    assert any(not torch.equal(snapshots[4][n], p) for n, p in snapshots[3].items())  # training went on
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert records[3]["skipped"] is True and records[3]["bad_steps"] == 1 and records[3]["loss"] == "nan"
    assert records[4]["skipped"] is False
    assert records[4]["lr"] == records[3]["lr"]  # the scheduler did not step either
    assert result.losses[2] is None and result.bad_steps == 1
    assert trainer.batches.state_dict()["position"] == 5  # the skipped step still used its batch


def test_consecutive_bad_steps_abort_with_clear_message(toy, tmp_path):
    trainer = toy.make_trainer(tmp_path, {"max_steps": 10, "max_bad_steps": 3}, nan_steps=[4, 5, 6])
    with pytest.raises(ClaraError, match=r"3 consecutive steps had a non-finite loss.*train.max_bad_steps=3"):
        trainer.train()
    assert trainer.counters.step == 5  # steps 1-3 ran, 4 and 5 skipped, aborted at 6


def test_corrupt_checkpoint_is_refused_and_resume_falls_back(toy, tmp_path, one_thread, caplog):
    reference = toy.make_trainer(tmp_path / "ref", {"max_steps": 6})
    reference.train()
    run = tmp_path / "run"
    toy.make_trainer(run, {"max_steps": 6}).train()
    bad_file = run / "checkpoints/step-000006/trainable.safetensors"
    data = bytearray(bad_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, size unchanged
    bad_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="step-000006/trainable.safetensors: sha256 mismatch"):
        verify_manifest(bad_file.parent)

    resumed = toy.make_trainer(run, {"max_steps": 6})
    with caplog.at_level(logging.INFO):
        result = resumed.train(resume=True)
    assert "step-000006/trainable.safetensors" in caplog.text
    assert "falling back to the previous valid checkpoint" in caplog.text
    assert result.resumed_from == 4
    for name, p in params_of(reference).items():
        assert torch.equal(params_of(resumed)[name], p), name
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_resume_with_changed_config_is_refused(toy, tmp_path):
    toy.make_trainer(tmp_path, {"max_steps": 4}).train()
    with pytest.raises(CheckpointError, match="config hash"):
        toy.make_trainer(tmp_path, {"max_steps": 6, "lr": 0.02}).train(resume=True)
    result = toy.make_trainer(tmp_path, {"max_steps": 6}, allow_config_change=True).train(resume=True)
    assert result.resumed_from == 4 and result.step == 6


def test_fresh_run_into_a_used_directory_is_refused(toy, tmp_path):
    toy.make_trainer(tmp_path, {"max_steps": 2}).train()
    with pytest.raises(ClaraError, match="--resume"):
        toy.make_trainer(tmp_path, {"max_steps": 2}).train()


def test_extra_state_round_trips(toy, tmp_path):
    box = {"rows": torch.arange(3.0)}
    trainer = toy.make_trainer(tmp_path, {"max_steps": 2})
    trainer.register_state("memory_rows", lambda: {"rows": box["rows"] * 2}, lambda s: box.update(s))
    trainer.train()
    resumed = toy.make_trainer(tmp_path, {"max_steps": 2})
    resumed.register_state("memory_rows", lambda: dict(box), lambda s: box.update(s))
    resumed.train(resume=True)
    assert torch.equal(box["rows"], torch.tensor([0.0, 2.0, 4.0]))


def test_the_trainer_moves_the_module_to_the_default_device(monkeypatch, tmp_path, toy):
    from clara.devices import ENV, module_device

    trainer = toy.make_trainer(tmp_path / "run")
    assert module_device(trainer.module).type == "cpu"
    monkeypatch.setenv(ENV, "meta")
    trainer._setup()
    assert module_device(trainer.module).type == "meta"
    assert all(p.device.type == "meta" for p in trainer.optimizer.param_groups[0]["params"])


def test_each_checkpoint_redraws_the_runs_curves_and_a_failed_figure_only_warns(toy, tmp_path, monkeypatch, caplog):
    from clara.training import curves as plots

    drawn = []
    real = plots.plot_training_curves

    def spy(metrics, path, **kw):
        drawn.append(len(read_metrics(metrics, kind=None)))  # the records logged by then
        return real(metrics, path, **kw)

    monkeypatch.setattr(plots, "plot_training_curves", spy)
    monkeypatch.setenv("CLARA_PLOTS", "0")  # as the fast tests run: no figures
    toy.make_trainer(tmp_path / "quiet", {"max_steps": 2, "save_every": 1}).train()
    assert drawn == [] and not (tmp_path / "quiet" / "curves.png").exists()
    monkeypatch.setenv("CLARA_PLOTS", "1")
    trainer = toy.make_trainer(tmp_path / "run", {"max_steps": 6, "save_every": 2, "log_every": 1})
    trainer.train()
    assert drawn == [2, 4, 6]  # at each checkpoint, with every step logged so far
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    def broken(metrics, path, **kw):
        raise RuntimeError("no display")

    monkeypatch.setattr(plots, "plot_training_curves", broken)
    with caplog.at_level(logging.WARNING):
        result = toy.make_trainer(tmp_path / "broken", {"max_steps": 2, "save_every": 1}).train()
    assert result.step == 2 and not (tmp_path / "broken" / "curves.png").exists()
    assert "curves not plotted (RuntimeError: no display)" in caplog.text
