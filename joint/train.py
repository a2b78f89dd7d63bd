"""Stage 2 recipe (DESIGN §5): setup -> cache candidate memory -> train on the shared loop -> save.

    result = run_joint(load_config("configs/smollm2.yaml", ["joint.world=out/world-0"]), resume=False)

1. Build the model; load SCP adapters from ``joint.init_adapters`` (an adapters directory, or
   a run directory holding ``adapters/``). Without it the current compressor adapter is used
   as is (fresh LoRA = the bare backbone), which is only good for mechanics.
2. The query adapter starts as a copy of the compressor adapter, so queries and documents
   begin in one space.
3. The compressor and the memory-token embeddings are frozen (both feed the cached memory);
   candidate memory is compressed once into a memory-mapped cache keyed by the compressor's
   hash. With ``joint.unfreeze_compressor`` it is recompressed with gradient every step.
4. The query and generator adapters train on the generator's next-token loss alone through
   :class:`clara.training.Trainer`; Recall@k on a dev subset is logged every
   ``joint.eval_every`` steps (``kind: "eval"`` lines in metrics.jsonl).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from clara.config import ClaraConfig
from clara.world.splits import load_split

log = logging.getLogger(__name__)

EVAL_KS = (1, 2, 3, 5)


def build_joint_model(cfg: ClaraConfig):
    """The model with SCP adapters loaded, query = copy of compressor, trainable set for this stage."""
    from clara.model.loading import model_from_adapters

    model = model_from_adapters(cfg, cfg.joint.init_adapters, "joint.init_adapters",
                                "joint.init_adapters is empty: the query reasoner starts from an untrained compressor")
    model.adapters.copy_adapter("compressor", "query")
    trained = ["query", "generator"] + (["compressor"] if cfg.joint.unfreeze_compressor else [])
    # mem_embed feeds compress(): trained only when the compressor is (else the cache goes stale)
    model.set_trainable(trained, mem_embed=cfg.joint.unfreeze_compressor)
    return model


def recall_eval(model, records: Sequence, cache, scoring) -> dict[str, float]:
    """Flat Recall@k metrics per question type for the metrics log, e.g. ``R@1/single_hop``."""
    from clara.model.scoring import rank_with_query_model, recall_by_type

    table = recall_by_type(rank_with_query_model(model, records, cache, scoring), records, EVAL_KS)
    return {f"{key}/{group}": value for group, row in table.items() for key, value in row.items() if key != "n"}


def make_eval_fn(cfg: ClaraConfig, records: Sequence, cache):
    from clara.model.memory_cache import MemoryCache

    def eval_fn(objective) -> dict[str, float]:
        model = objective.model
        if not cfg.joint.unfreeze_compressor:
            return recall_eval(model, records, cache, cfg.joint.scoring)
        tmp = tempfile.mkdtemp(prefix="clara-eval-cache-")  # the compressor changed: compress afresh
        try:
            return recall_eval(model, records, MemoryCache.for_model(model, tmp), cfg.joint.scoring)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return eval_fn


def run_joint(cfg: ClaraConfig, resume: bool = False, allow_config_change: bool = False) -> dict[str, Any]:
    """Train stage 2; returns the TrainResult, the trained model and Recall@k before/after on the dev subset."""
    from clara.fileio import atomic_write_json
    from clara.model.memory_cache import MemoryCache, cache_root
    from clara.joint.objective import JointObjective
    from clara.training import ResumableBatches, Trainer

    train = load_split(cfg, cfg.joint.train_split, train=True)
    dev = load_split(cfg, cfg.joint.eval_split, train=False)[: cfg.joint.eval_limit]
    model = build_joint_model(cfg)
    cache = MemoryCache.for_model(model, cache_root(cfg))
    cache.fill(model, (d for r in list(train) + list(dev) for d in r.candidates))
    objective = JointObjective(model, None if cfg.joint.unfreeze_compressor else cache, cfg.joint)
    eval_fn = make_eval_fn(cfg, dev, cache)
    out = Path(cfg.out_dir)
    before = eval_fn(objective) if dev else {}  # the starting model, also when resuming (built the same)
    batches = ResumableBatches(train, cfg.train.batch_size, list, seed=cfg.train.seed)

    def loss_fn(m, batch):
        # the step about to be taken; a resumed run knows it from its checkpoint, so warm-up resumes exactly
        return m(batch, query_grad=trainer.counters.step >= cfg.joint.query_warmup_steps)

    trainer = Trainer(objective, cfg.train, out, loss_fn, batches, config_for_hash=cfg,
                      eval_fn=eval_fn if dev else None, eval_every=cfg.joint.eval_every,
                      allow_config_change=allow_config_change)
    result = trainer.train(resume=resume)
    model.save_adapters(out / "adapters", prompt=cfg.joint.prompt)
    after = eval_fn(objective) if dev else {}
    summary = {"before": before, "after": after, "steps": result.step, "compressor_hash": cache.key,
               "dev_questions": len(dev), "train_questions": len(train)}
    atomic_write_json(out / "recall.json", summary)
    return {"result": result, "model": model, **summary}
