"""Compression-rate sweep (DESIGN §10): SCP once per compression rate, then one compression evaluation.

    clara pretrain sweep configs/smollm2.yaml train.max_steps=2000 \\
        --crs 4,16,32,64,128,256 --world-fresh --eval-world out/world --out out/sweep

For each CR the recipe trains SCP into ``OUT/cr-{CR}`` with ``model.compression_rate=CR`` added to
the overrides (so ``m = chunk_len // CR`` memory vectors), exactly as ``clara pretrain train`` would.
A CR whose run already finished (``adapters/clara_model.json`` written, ``metrics.jsonl`` at
``train.max_steps``, same config hash) is skipped; any other is resumed from its newest checkpoint,
so a killed sweep is continued by running the same command again. Then every CR is evaluated on the
same held-out questions (``clara.eval.compression``): ``memory`` and ``wrong_memory`` per CR, the
text baselines ``raw_text`` and ``closed_book`` once (they do not depend on the adapters). Written:

    OUT/sweep.json   the results of `clara eval compression --out`, plus per-CR training records
    OUT/sweep.md     the tables (format_table) and the training times
    OUT/sweep.png    metric vs CR (plot_cr_sweep)

Every CR must divide ``model.chunk_len``; that is checked for all of them before any training.
With ``scp.init_adapters`` plus ``scp.init_other_cr=true`` in the overrides, every CR starts from one
trained run of any rate (its LoRA, its memory-token embeddings resampled), a sweep at equal extra steps.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from clara.config import ClaraConfig, config_hash, load_config
from clara.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_CRS = (4, 16, 32, 64, 128, 256)
TRAIN_RECORD = "sweep_train.json"  # per-CR training seconds, summed over the invocations that trained it


def cr_dir(out: str | Path, cr: int) -> Path:
    return Path(out) / f"cr-{cr}"


def sweep_configs(config: str | Path | None, overrides: Sequence[str], crs: Sequence[int]) -> dict[int, ClaraConfig]:
    """One resolved config per CR; every CR is checked against chunk_len before any is used."""
    crs = list(crs)
    if not crs:
        raise ConfigError("--crs: give at least one compression rate, e.g. --crs 4,16,32,64,128,256")
    if len(set(crs)) != len(crs):
        raise ConfigError(f"--crs {','.join(map(str, crs))}: a compression rate is given twice")
    if any(o.startswith("model.compression_rate=") for o in overrides):
        log.warning("model.compression_rate in the overrides is ignored: --crs sets it per run")
    # rate 1 divides every chunk_len: the rest of the config is validated without the swept field
    base = load_config(config, [*overrides, "model.compression_rate=1"])
    chunk_len = base.model.chunk_len
    bad = [cr for cr in crs if cr < 1 or chunk_len % cr]
    if bad:
        raise ConfigError(
            f"--crs {','.join(map(str, bad))}: model.chunk_len={chunk_len} is not a multiple of "
            f"{'that rate' if len(bad) == 1 else 'these rates'}; give --crs that divide {chunk_len} "
            f"(or set model.chunk_len to a multiple of every rate)"
        )
    return {cr: load_config(config, [*overrides, f"model.compression_rate={cr}"]) for cr in crs}


def _saved_config_hash(run_dir: Path) -> str | None:
    """The hash on the first line of ``config.yaml`` (written by the Trainer), if any."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    prefix = "# config hash:"
    return first[len(prefix):].strip() if first.startswith(prefix) else None


def _last_logged_step(run_dir: Path) -> int:
    from clara.training import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    try:
        records = read_metrics(path, kind=None)
    except ValueError:  # a line cut short by a kill: not finished, resume will repair it
        return 0
    return max((int(r.get("step", 0)) for r in records), default=0)


def run_is_finished(run_dir: str | Path, cfg: ClaraConfig) -> bool:
    """Adapters written, the last step logged, and trained under this very config."""
    from clara.pretrain.scp import ADAPTERS_SUBDIR

    run_dir = Path(run_dir)
    if not (run_dir / ADAPTERS_SUBDIR / "clara_model.json").is_file():
        return False
    if _last_logged_step(run_dir) < cfg.train.max_steps:
        return False
    saved = _saved_config_hash(run_dir)
    if saved != config_hash(cfg):
        log.warning("%s: finished under another config (hash %s, now %s); resuming it instead of skipping",
                    run_dir, saved, config_hash(cfg))
        return False
    return True


def _read_train_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRAIN_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}


def train_one(cr: int, cfg: ClaraConfig, run_dir: Path, *, data, fresh: bool, skip_bad: bool = False,
              allow_config_change: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train (or resume, or skip) the SCP run of one CR; returns its training record."""
    from clara.fileio import atomic_write_json
    from clara.pretrain.scp import train_scp
    from clara.training.checkpoint import list_checkpoints

    previous = _read_train_record(run_dir)
    base = {"cr": cr, "num_mem": cfg.model.num_mem_tokens, "run_dir": str(run_dir), "config_hash": config_hash(cfg)}
    if run_is_finished(run_dir, cfg):
        log.info("CR %d: %s already finished (%d steps); skipped", cr, run_dir, cfg.train.max_steps)
        return {**base, "status": "skipped", "steps": _last_logged_step(run_dir), "train_seconds": 0.0,
                "train_seconds_total": previous.get("train_seconds_total")}  # fmt: skip
    status = "resumed" if list_checkpoints(run_dir / "checkpoints") else "trained"
    log.info("CR %d (m=%d): %s SCP in %s", cr, cfg.model.num_mem_tokens,
             "resuming" if status == "resumed" else "training", run_dir)  # fmt: skip
    start = time.perf_counter()
    # resume=True: a fresh directory starts at step 0, a killed one continues exactly
    result = train_scp(cfg, data, fresh=fresh, resume=True, out_dir=run_dir, skip_bad=skip_bad,
                       allow_config_change=allow_config_change)  # fmt: skip
    seconds = time.perf_counter() - start
    total = (previous.get("train_seconds_total") or 0.0) + seconds
    record = {**base, "status": status, "steps": result.step, "resumed_from": result.resumed_from,
              "bad_steps": result.bad_steps, "train_seconds": round(seconds, 3),
              "train_seconds_total": round(total, 3)}  # fmt: skip
    keep = ("cr", "config_hash", "steps", "train_seconds_total")
    atomic_write_json(run_dir / TRAIN_RECORD, {k: record[k] for k in keep})
    log.info("CR %d: %s to step %d in %.1f s (%.1f s in all)", cr, status, result.step, seconds, total)
    return record


def training_table(training: Sequence[dict[str, Any]]) -> str:
    lines = ["| CR | m | status | steps | train s (this run) | train s (total) |", "|---|---|---|---|---|---|"]
    for t in training:
        total = t.get("train_seconds_total")
        lines.append(f"| {t['cr']} | {t['num_mem']} | {t['status']} | {t['steps']} | {t['train_seconds']:.1f} | "
                     f"{'?' if total is None else f'{total:.1f}'} |")  # fmt: skip
    return "\n".join(lines)


def write_sweep_outputs(results: dict[str, Any], out: Path, *, plot_metric: str = "em") -> dict[str, Path]:
    """sweep.json (atomic), sweep.md (tables) and sweep.png (metric vs CR)."""
    from clara.eval.compression import format_table
    from clara.eval.plots import plot_cr_sweep
    from clara.fileio import atomic_write_json, atomic_write_text

    paths = {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
    atomic_write_json(paths["json"], results)
    first = results["runs"][0]
    text = (f"# Compression-rate sweep\n\n{first['n']} questions on {first['documents']} documents from "
            f"{','.join(results['splits'])} of {results['world']}; backbone {first['backbone']}.\n\n"
            f"{format_table(results)}\n\n## Training\n\n{training_table(results['sweep']['training'])}\n")  # fmt: skip
    atomic_write_text(paths["md"], text)
    plot_cr_sweep(results, paths["png"], metric=plot_metric, title=f"{plot_metric} vs compression rate (SCP sweep)")
    return paths


def run_sweep(
    config: str | Path | None, overrides: Sequence[str], crs: Sequence[int], out: str | Path, *,
    data: str | Path | None = None, fresh: bool = False, eval_world: str, eval_splits: Sequence[str] = ("test_unseen",),
    eval_types: Sequence[str] = ("single_hop",), eval_limit: int | None = 100, skip_bad: bool = False,
    allow_config_change: bool = False, plot_metric: str = "em", **eval_kw: Any,
) -> dict[str, Any]:  # fmt: skip
    """Train every CR (skipping finished ones), evaluate them together, write OUT/sweep.{json,md,png}.

    ``eval_kw`` goes to :func:`clara.eval.compression.evaluate_compression` (settings, prompt, style,
    batch_size, max_new_tokens). Returns the results dict written to sweep.json.
    """
    from clara.eval.compression import SETTINGS, run_compression_eval
    from clara.eval.reading import load_world_questions

    out = Path(out)
    configs = sweep_configs(config, overrides, crs)
    # everything a user can get wrong fails here, not after hours of training
    if not fresh and not data:
        raise ConfigError("the sweep needs training data: give --data FILE or --world-fresh")
    if data and not fresh and not Path(data).is_file():
        raise DataError(f"{data}: training data not found; give --data a pretrain JSONL (`clara pretrain synth`)")
    unknown = set(eval_kw.get("settings", SETTINGS)) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"--settings {','.join(sorted(unknown))}: not a setting; choose from {','.join(SETTINGS)}")
    load_world_questions(eval_world, eval_splits, eval_types, eval_limit)
    out.mkdir(parents=True, exist_ok=True)
    training, start = [], time.perf_counter()
    for i, (cr, cfg) in enumerate(configs.items(), 1):
        log.info("sweep %d/%d: CR %d", i, len(configs), cr)
        training.append(train_one(cr, cfg, cr_dir(out, cr), data=data, fresh=fresh, skip_bad=skip_bad,
                                  allow_config_change=allow_config_change))  # fmt: skip
    train_seconds = time.perf_counter() - start
    log.info("sweep: evaluating %d CRs on %s", len(configs), eval_world)
    eval_start = time.perf_counter()
    results = run_compression_eval([str(cr_dir(out, cr)) for cr in configs], eval_world, crs=list(configs),
                                   splits=eval_splits, types=eval_types, limit=eval_limit, **eval_kw)  # fmt: skip
    by_cr = {t["cr"]: t for t in training}
    for run in results["runs"]:
        run["training"] = by_cr[run["cr"]]
    results["sweep"] = {"crs": list(configs), "out": str(out), "training": training,
                        "train_seconds": round(train_seconds, 3),
                        "eval_seconds": round(time.perf_counter() - eval_start, 3)}  # fmt: skip
    write_sweep_outputs(results, out, plot_metric=plot_metric)
    return results
