"""Stage 1, optional instruction tuning (DESIGN §4): question + k documents' memories -> answer.

    result = train_instruct(cfg, init="out/scp-run")           # or joint.init_adapters=out/scp-run
    # out_dir/adapters: compressor + generator tuned to answer a question asked as is

SCP teaches the generator to *recite* a document's facts from its memory; this step teaches it to
*answer a question* from the memories of ``scp.instruct_k`` documents, so ``clara eval compression
--prompt direct`` and stage 2 (which asks questions as is) start from a generator that answers.
Starts from SCP adapters and trains the same set as SCP: compressor + generator LoRA and the
memory-token embeddings; the query adapter and every base weight stay frozen.

Loss: generator next-token cross-entropy on the answer given the k memories. The k documents are
the record's gold document(s) plus its first non-gold candidates (retrieved order: the hardest
negatives first); the gold slots are chosen by a stable hash of the question id, so the generator
cannot learn "read slot 0" and a resumed run sees exactly the same layout.

Data: joint records (``question``, ``answers``, candidates, ``pos_index``) of ``data.train_file``
or the ``joint.train_split`` split of ``joint.world``, as in stage 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from clara.config import ClaraConfig, GeneratorPrompt
from clara.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstructExample:
    """One question with the k document texts the generator reads (gold ones at ``gold_slots``)."""

    question: str
    answer: str
    docs: tuple[str, ...]
    gold_slots: tuple[int, ...]


def gold_slots_for(key: str, k: int, golds: int) -> tuple[int, ...]:
    """Slots (sorted) of ``golds`` gold documents among k, from a stable hash of ``key`` (the question id)."""
    rng = random.Random(int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16))
    return tuple(sorted(rng.sample(range(k), golds)))


def example_from_record(rec, k: int) -> InstructExample:
    """The record's gold document(s) (at most k) plus its first non-gold candidates, k in all."""
    gold_index = set(rec.pos_index)
    gold = [rec.candidates[i] for i in rec.pos_index][:k]
    others = [d for i, d in enumerate(rec.candidates) if i not in gold_index][: k - len(gold)]
    slots = gold_slots_for(rec.id or rec.question, k, len(gold))
    docs, gi, oi = [], iter(gold), iter(others)
    for s in range(k):
        docs.append(next(gi) if s in slots else next(oi))
    return InstructExample(rec.question, rec.answers[0], tuple(d.as_text() for d in docs), slots)


def build_examples(records: Sequence, k: int, source: str = "the data") -> list[InstructExample]:
    """Examples of every record with a gold document; records without one are skipped (logged)."""
    fewest = min((len(r.candidates) for r in records), default=0)
    if fewest < k:
        raise ConfigError(f"config key 'scp.instruct_k': {k} documents per question, but {source} has questions with "
                          f"only {fewest} candidates; set scp.instruct_k <= {fewest}")
    usable = [r for r in records if r.pos_index]
    if len(usable) < len(records):
        log.warning("%s: %d of %d questions have no gold document (pos_index empty); skipped",
                    source, len(records) - len(usable), len(records))
    if not usable:
        raise DataError(f"{source}: no question has a gold document (pos_index); instruction tuning needs one")
    multi = sum(len(r.pos_index) > k for r in usable)
    if multi:
        log.warning("%s: %d questions have more gold documents than scp.instruct_k=%d; they see only the first %d",
                    source, multi, k, k)
    return [example_from_record(r, k) for r in usable]


# ---------------------------------------------------------------------------- the objective


class InstructObjective(nn.Module):
    """Answer CE given k memories, as a module so DDP can wrap it (its forward is what the Trainer calls)."""

    def __init__(self, model, k: int, max_answer_tokens: int = 192):
        super().__init__()
        self.model = model  # ClaraModel
        self.k = k
        self.max_answer_tokens = max_answer_tokens

    def forward(self, batch: Sequence[InstructExample]) -> tuple[torch.Tensor, dict[str, float]]:
        return instruct_loss(self.model, batch, self.k, self.max_answer_tokens)


def instruct_loss(model, batch: Sequence[InstructExample], k: int, max_answer_tokens: int = 192):
    """Generator next-token CE on the answers given each question's k memories -> (loss, metrics)."""
    docs = [d for e in batch for d in e.docs]  # B·k texts, question-major
    mem = model.compress(docs)  # (B·k, m, H)
    mem_blocks = mem.view(len(batch), k, *mem.shape[1:])  # (B, k, m, H)
    answers = [e.answer for e in batch]
    ce = model.generator_loss([e.question for e in batch], mem_blocks, answers, max_answer_len=max_answer_tokens)
    tokens = sum(len(model.tokenizer(a, add_special_tokens=False)["input_ids"][:max_answer_tokens]) for a in answers)
    return ce, {"ce": float(ce.detach()), "tokens": float(tokens)}


# ---------------------------------------------------------------------------- the recipe


def with_init(cfg: ClaraConfig, init: str | Path | None) -> ClaraConfig:
    """``cfg`` with ``joint.init_adapters`` set to ``init`` (so it is saved and hashed with the run)."""
    if init:
        cfg = dataclasses.replace(cfg, joint=dataclasses.replace(cfg.joint, init_adapters=str(init)))
    if not cfg.joint.init_adapters:
        raise ConfigError("instruction tuning starts from SCP adapters: give --init DIR (the run directory of "
                          "`clara pretrain train` or its adapters/) or set joint.init_adapters")
    return cfg


def resolve_init(cfg: ClaraConfig) -> Path:
    """The adapters directory named by ``joint.init_adapters`` (a run dir holding adapters/ works too)."""
    from clara.model.loading import resolve_adapters_dir

    return resolve_adapters_dir(cfg.joint.init_adapters, key="--init / joint.init_adapters")


def build_instruct_model(cfg: ClaraConfig):
    """ClaraModel with the SCP adapters of ``joint.init_adapters`` loaded and SCP's trainable set."""
    from clara.model.clara_model import ClaraModel
    from clara.pretrain.scp import SCP_ADAPTERS
    from clara.training import seed_everything

    init = resolve_init(cfg)
    seed_everything(cfg.train.seed)  # LoRA init draws from torch's RNG: same config, same start
    model = ClaraModel.from_config(cfg.model, seed=cfg.train.seed)
    model.load_adapters(init)
    model.set_trainable(list(SCP_ADAPTERS), mem_embed=True)
    return model


def instruct_dataset(cfg: ClaraConfig) -> list[InstructExample]:
    from clara.world.splits import load_split, world_questions

    records = load_split(cfg, cfg.joint.train_split, train=True)
    split = cfg.joint.train_split
    files = [cfg.data.train_file] if cfg.data.train_file else [str(world_questions(cfg.joint.world, split))]
    source = " + ".join(files + [str(world_questions(w, split)) for w in cfg.joint.train_worlds])
    examples = build_examples(records, cfg.scp.instruct_k, source)
    log.info("%s: %d instruction examples, %d documents each", source, len(examples), cfg.scp.instruct_k)
    return examples


def train_instruct(
    cfg: ClaraConfig,
    init: str | Path | None = None,
    *,
    resume: bool = False,
    out_dir: str | Path | None = None,
    model=None,
    allow_config_change: bool = False,
    on_step=None,
):
    """Instruction-tune on the shared Trainer; writes checkpoints, metrics.jsonl, config.yaml, ``out_dir/adapters``.

    ``init`` overrides ``joint.init_adapters``. ``model``: an already built model (tests inspect it
    afterwards; default :func:`build_instruct_model`). ``on_step(step, record)`` goes to the Trainer.
    """
    from clara.pretrain.scp import ADAPTERS_SUBDIR, SCP_ADAPTERS
    from clara.training import ResumableBatches, Trainer

    cfg = with_init(cfg, init)
    resolve_init(cfg)  # a bad path fails before the data is read
    out = Path(out_dir or cfg.out_dir)
    dataset = instruct_dataset(cfg)
    if model is None:
        model = build_instruct_model(cfg)
    else:
        model.set_trainable(list(SCP_ADAPTERS), mem_embed=True)
    objective = InstructObjective(model, cfg.scp.instruct_k, cfg.scp.max_target_tokens)
    batches = ResumableBatches(dataset, cfg.train.batch_size, list, seed=cfg.train.seed)
    trainer = Trainer(objective, cfg.train, out, lambda m, batch: m(batch), batches, config_for_hash=cfg,
                      on_step=on_step, allow_config_change=allow_config_change)
    result = trainer.train(resume=resume)
    if trainer.ctx.is_main:
        model.save_adapters(out / ADAPTERS_SUBDIR, SCP_ADAPTERS, prompt=GeneratorPrompt.DIRECT)
    return result
