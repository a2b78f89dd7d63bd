"""Stage 1 — Salient Compressor Pretraining (DESIGN §4): the objective and the recipe.

    L = CE(generator(instruction, mem) -> target) + λ · MSE(mean_i mem_i, mean_t h_t)

``mem`` (B, m, H) is the compressor's last-layer states at the m memory positions of a
document; ``h_t`` its last-layer states at the document's own tokens. Optional, beyond the
reference: ``+ w · InfoNCE`` (``scp.contrastive_weight``), each document's pooled memory against
its own text states among the batch's, both centred over the batch — it keeps documents' memories
apart (measured on SmolLM2, r = 64, 500 steps × 32 on a GPU: between-document variance share
0.011 -> 0.036, held-out EM from memory 0.240 -> 0.305 on 200 questions). The generator sees only
``mem`` (spliced into its prompt), never the text. QA target: every pair of the document as
``Question: …\\nAnswer: …`` lines (``scp.qa_layout``: in the teacher's order, shuffled per record,
or one generator row per pair, all reading one compression); paraphrase target: the rewritten
document, asked for with one of several instruction templates. Compressor + generator LoRA and
the memory-token embeddings train; the query adapter and every base weight stay frozen.

    result = train_scp(cfg, data="data/synth.jsonl")          # or fresh=True: endless new documents
    # out_dir/adapters is a standard adapter directory (ClaraModel.load_adapters)

Data: a PretrainRecord JSONL (``clara pretrain synth``, project or reference format) or a
stream of fresh world documents synthesised on the fly with the world teacher, so nothing can
be memorised instead of compressed (DESIGN §7). The stream is a deterministic function of
``scp.fresh_seed``: a resumed run regenerates exactly the documents the killed one would have seen.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from clara.config import ClaraConfig, GeneratorPrompt, QaLayout, ScpConfig
from clara.errors import ConfigError, DataError
from clara.data.records import DataType, PretrainRecord
from clara.model.prompts import QA_INSTRUCTION

log = logging.getLogger(__name__)

PARAPHRASE_INSTRUCTIONS = (
    "Rewrite the background in other words, keeping every fact.",
    "Paraphrase the background.",
    "Say the same as the background, in different words.",
    "Restate every fact of the background in your own words.",
)
RECONSTRUCTION_INSTRUCTION = "Repeat the background word for word."
RECONSTRUCTION = "reconstruction"  # scp.data_types: the document itself is the target
ADAPTERS_SUBDIR = "adapters"
SCP_ADAPTERS = ("compressor", "generator")  # what stage 1 trains and saves; the query reasoner is joint's


@dataclass(frozen=True)
class ScpExample:
    """One SCP sample: the document to compress, the generator's instruction and its target.

    ``rows`` (``qa_layout: rows``): the targets the generator is trained on, one row each, all reading
    one compression of ``doc``; ``target`` then holds the same pairs as lines. Empty: ``target`` is the row.
    """

    doc: str
    instruction: str
    target: str
    rows: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return self.rows or (self.target,)


ANSWER_LINE = "\nAnswer:"


def qa_target(pairs) -> str:
    return "\n".join(f"Question: {p.question}{ANSWER_LINE} {p.answer}" for p in pairs)


def _stable_int(key: str) -> int:
    """A hash of ``key`` that is the same in every process (Python's ``hash`` of a str is salted)."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16)


def _pick(options: Sequence[str], key: str) -> str:
    """A template chosen by a stable hash of ``key``: the same record always gets the same one."""
    return options[_stable_int(key) % len(options)]


def shuffled_pairs(pairs: Sequence, key: str) -> list:
    """The pairs in an order fixed by a stable hash of ``key``: the same record always gets the same order."""
    out = list(pairs)
    random.Random(_stable_int(key)).shuffle(out)
    return out


def example_from_record(rec: PretrainRecord, scp: ScpConfig | None = None, group: int = 0) -> ScpExample:
    """QA targets as ``scp.qa_layout`` says; with ``rows``, ``scp.rows_per_document`` n of the pairs train
    (0 = every pair): group g of a stable shuffle per record, pairs g·n … g·n+n-1. ``target`` lists them all."""
    if rec.data_type is DataType.QA:
        scp, key = scp or ScpConfig(), rec.id or rec.doc
        layout, n = QaLayout(scp.qa_layout), scp.rows_per_document
        pairs = shuffled_pairs(rec.pairs, key) if layout is QaLayout.SHUFFLED else rec.pairs
        rows = ()
        if layout is QaLayout.ROWS:
            picked = shuffled_pairs(rec.pairs, key)[group * n : group * n + n] if n else rec.pairs
            rows = tuple(qa_target([p]) for p in picked)
        return ScpExample(rec.doc, QA_INSTRUCTION, qa_target(pairs), rows)
    instruction = rec.instruction or _pick(PARAPHRASE_INSTRUCTIONS, rec.id or rec.doc)
    return ScpExample(rec.doc, instruction, rec.paraphrase or "")


def reconstruction_example(doc: str) -> ScpExample:
    """The generator spells ``doc`` back from its memory (issue 28 lever (a), a warm-up before QA)."""
    return ScpExample(doc, RECONSTRUCTION_INSTRUCTION, doc)


def examples_from_record(rec: PretrainRecord, scp: ScpConfig | None = None) -> list[ScpExample]:
    """Every group of a record's pairs (:func:`example_from_record`), so that an epoch over a file trains
    every pair once: with ``rows_per_document`` n, a record of P pairs gives ceil(P / n) examples, each one
    compression of the document read by n rows. (A single draw, as the fresh stream takes, would train the
    same n pairs in every epoch and never the others: issue 28's capacity test trained 38 of 128 facts.)"""
    scp = scp or ScpConfig()
    n = scp.rows_per_document
    if rec.data_type is not DataType.QA or QaLayout(scp.qa_layout) is not QaLayout.ROWS or not n:
        return [example_from_record(rec, scp)]
    return [example_from_record(rec, scp, g) for g in range(max(1, -(-len(rec.pairs) // n)))]


def load_examples(path: str | Path, data_types: Sequence[str] = ("qa", "paraphrase"), skip_bad: bool = False,
                  scp: ScpConfig | None = None) -> list[ScpExample]:
    """SCP examples from a pretrain JSONL (project or reference format); records of other types are left out.
    With ``scp.rows_per_document`` n, a QA record of P pairs gives ceil(P / n) examples (:func:`examples_from_record`)."""
    from clara.data.jsonl import read_records

    records = read_records(path, "pretrain", skip_bad=skip_bad)
    examples = [e for r in records if r.data_type.value in data_types for e in examples_from_record(r, scp)]
    if RECONSTRUCTION in data_types:  # each distinct document once, in file order
        examples += [reconstruction_example(d) for d in dict.fromkeys(r.doc for r in records)]
    examples = [e for e in examples if e.target.strip()]
    if not examples:
        raise DataError(f"{path}: no usable records of data_type {', '.join(data_types)} (empty targets are skipped)")
    log.info("%s: %d SCP examples from %d records", path, len(examples), len(records))
    return examples


def _fresh_examples(seed: int, data_types: Sequence[str], scp: ScpConfig | None = None) -> Iterator[ScpExample]:
    """Endless examples from never-repeating world documents, synthesised by the world teacher."""
    from clara.pretrain.synth import fresh_world_documents, result_records, synthesize_document
    from clara.pretrain.teacher_factory import make_teacher

    teacher = make_teacher("world")
    for doc in fresh_world_documents(1 << 62, seed, scp.fresh_world_ranges if scp is not None else 0):
        result = synthesize_document(doc, teacher)
        if not result.kept:
            continue
        records = [PretrainRecord.from_json(obj, f"fresh document {doc.id}")
                   for obj in result_records(result, teacher.name)]
        if RECONSTRUCTION in data_types and records:
            yield reconstruction_example(records[0].doc)
        for rec in records:
            if rec.data_type.value in data_types:
                yield example_from_record(rec, scp)


class FreshExamples(Sequence):
    """A lazily grown, deterministic sequence of fresh-document examples (read in order, once each).

    ``ResumableBatches`` needs random access; items are produced on first access and cached, so
    a resumed run that asks for item i gets the same example the first run got.
    """

    def __init__(self, seed: int, length: int, data_types: Sequence[str] = ("qa", "paraphrase"),
                 scp: ScpConfig | None = None):
        self.seed, self.length = seed, length
        self._stream = _fresh_examples(seed, tuple(data_types), scp)
        self._items: list[ScpExample] = []

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if not 0 <= i < self.length:
            raise IndexError(i)
        while len(self._items) <= i:
            self._items.append(next(self._stream))
        return self._items[i]


# ---------------------------------------------------------------------------- the objective


class ScpObjective(nn.Module):
    """The SCP loss as a module, so DDP can wrap it (its forward is what the Trainer calls)."""

    def __init__(self, model, scp: ScpConfig | None = None):
        super().__init__()
        self.model = model  # ClaraModel
        self.scp = scp or ScpConfig()
        depth = model.lm.config.num_hidden_layers
        if self.scp.distill_weight and max(self.scp.distill_layers) > depth:
            raise ConfigError(f"config key 'scp.distill_layers': {list(self.scp.distill_layers)}, but this backbone "
                              f"has hidden states 0..{depth}")

    def forward(self, batch: Sequence[ScpExample]) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.scp
        if s.read_text:
            return text_control_loss(self.model, batch, s.max_target_tokens, s.answer_only)
        return scp_loss(self.model, batch, s.mse_weight, s.max_target_tokens, s.contrastive_weight, s.contrastive_temperature,
                        distill=s if s.distill_weight else None, answer_only=s.answer_only, select_weight=s.select_weight,
                        select_one_slot=s.select_one_slot)


def split_reply(row: str) -> tuple[str, str]:
    """(reply prefix, answer) of a QA row ``Question: q\nAnswer: a``: the prefix ends with ``Answer:``. A row
    without that line (a paraphrase) is all answer, with an empty prefix."""
    head, sep, answer = row.rpartition(ANSWER_LINE)
    return (head + sep, answer.strip()) if sep else ("", row)


def scp_loss(model, batch: Sequence[ScpExample], mse_weight: float = 0.1, max_target_tokens: int = 192,
             contrastive_weight: float = 0.0, contrastive_temperature: float = 0.1, distill: ScpConfig | None = None,
             answer_only: bool = False, select_weight: float = 0.0, select_one_slot: bool = False):
    """``CE + λ·MSE (+ w·InfoNCE) (+ w·distillation) (+ w·span)`` on one batch -> (loss, metrics: ce, mse, mem_cos,
    tokens[, nce, nce_acc][, distill, teacher_ce][, select]). ``distill``: its distill_* fields (ScpConfig).
    ``select_weight``: with a selector (``model.memory_select``), the weight of its span term
    (:func:`~clara.model.select.span_loss` over the last tokens of the batch's answers in their documents;
    ``select_one_slot``: each held by one slot).
    ``answer_only``: each row's reply is given up to ``Answer:`` and only the answer (and its end) is a
    target (:func:`split_reply`); ``tokens`` then counts answer tokens."""
    docs = [e.doc for e in batch]
    mem, text_mean = model.compress(docs, return_text_mean=True)  # (B, m, W), (B, H)
    mem_states = model.memory_states(mem)  # (B, m, H): W = H unless the generator reads keys and values
    mse = nn.functional.mse_loss(mem_states.mean(1).float(), text_mean.float())
    # one generator row per target; a document's rows all read its one compression
    owner = [i for i, e in enumerate(batch) for _ in e.targets]
    targets, prefixes = _rows(batch, answer_only)
    instructions = [batch[i].instruction for i in owner]
    layers = tuple(distill.distill_layers) if distill else ()
    token_loss, _, states = model.generator_pass(instructions, mem[owner][:, None], targets, reply_prefixes=prefixes,
                                                 max_answer_len=max_target_tokens, states_at=layers)
    ce = token_loss.mean()
    loss = ce + mse_weight * mse if mse_weight else ce
    metrics = {"ce": float(ce.detach()), "mse": float(mse.detach())}
    if select_weight and model.selector is not None:
        term = select_span_term(model, batch, select_one_slot)
        loss = loss + select_weight * term
        metrics["select"] = float(term.detach())
    if layers:
        teacher = "generator" if distill.distill_teacher == "generator" else None
        with torch.no_grad():  # the open-book view of the same rows: the document as text where memory goes
            teacher_loss, _, teacher_states = model.generator_pass(
                instructions, None, targets, adapter=teacher, max_answer_len=max_target_tokens, reply_prefixes=prefixes,
                documents=[docs[i] for i in owner], states_at=layers)
        term = hidden_distill(states, teacher_states)
        loss = loss + distill.distill_weight * term
        metrics.update(distill=float(term.detach()), teacher_ce=float(teacher_loss.mean()))
    if contrastive_weight:
        first: dict[str, int] = {}
        for i, doc in enumerate(docs):
            first.setdefault(doc, i)  # one row per distinct document (a file may hold its QA and paraphrase)
        rows = list(first.values())
        if len(rows) > 2:  # centred over two documents, any two memories are opposite
            nce, acc = memory_text_infonce(mem_states[rows], text_mean[rows], contrastive_temperature)
            loss = loss + contrastive_weight * nce
            metrics.update(nce=float(nce.detach()), nce_acc=acc)
    with torch.no_grad():
        metrics["mem_cos"] = mean_pairwise_cosine(mem_states.detach())
    metrics["tokens"] = _count_tokens(model, targets, max_target_tokens)
    return loss, metrics


def select_span_term(model, batch: Sequence[ScpExample], one_slot: bool = False) -> torch.Tensor:
    """The selector's span loss on the compression just made of ``batch``'s documents: each example's QA
    answers (its rows' or lines' ``Answer:`` parts; paraphrases have none) located in its document."""
    from clara.model.select import answer_token_index, span_loss

    targets = []
    for e in batch:
        lines = [r for t in e.targets for r in t.split("\nQuestion: ")]
        answers = [answer for prefix, answer in map(split_reply, lines) if prefix]
        targets.append(answer_token_index(model, e.doc, answers))
    return span_loss(model.select_attention, targets, one_slot=one_slot)


def _rows(batch: Sequence[ScpExample], answer_only: bool) -> tuple[list[str], list[str] | None]:
    """(targets, reply prefixes or None): one generator row per target of each example, in batch order."""
    targets = [t for e in batch for t in e.targets]
    if not answer_only:
        return targets, None
    prefixes, answers = zip(*map(split_reply, targets))
    return list(answers), list(prefixes)


def _count_tokens(model, targets: Sequence[str], max_target_tokens: int) -> float:
    return float(sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"][:max_target_tokens]) for t in targets))


def text_control_loss(model, batch: Sequence[ScpExample], max_target_tokens: int = 192, answer_only: bool = False):
    """``scp.read_text``, the control of issue 28's capacity test: the same rows and generator LoRA, with each
    document as text where its memory would go (no compression, no MSE) -> (CE, metrics: ce, tokens)."""
    owner = [i for i, e in enumerate(batch) for _ in e.targets]
    targets, prefixes = _rows(batch, answer_only)
    token_loss, _, _ = model.generator_pass([batch[i].instruction for i in owner], None, targets,
                                            reply_prefixes=prefixes, max_answer_len=max_target_tokens,
                                            documents=[batch[i].doc for i in owner])
    ce = token_loss.mean()
    return ce, {"ce": float(ce.detach()), "tokens": _count_tokens(model, targets, max_target_tokens)}


def hidden_distill(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ||s - t||^2 / ||t||^2, each over all (N, H) states of that layer: 0 when the
    memory-reading pass holds the open-book pass's states, 1 when it holds zeros; scale-free per layer, as
    the residual stream's norm grows with depth."""
    terms = [(s.float() - t.float()).pow(2).sum() / t.float().pow(2).sum().clamp(min=1e-12)
             for s, t in zip(student, teacher, strict=True)]
    return torch.stack(terms).mean()


def memory_text_infonce(mem: torch.Tensor, text_mean: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, float]:
    """Symmetric in-batch InfoNCE: document i's pooled memory must pick its own text states among the batch's.

    mem (B, m, H), text_mean (B, H). Both are centred over the batch first: raw last-layer states share one
    large direction (cosine ~0.97 between any two documents), which would drown the differences; the
    generator and retrieval read memory centred as well (``memory_norm``). Returns (loss, top-1 accuracy).
    """
    pooled = mem.float().mean(1)  # (B, H)
    text = text_mean.float()
    z_mem = nn.functional.normalize(pooled - pooled.mean(0, keepdim=True), dim=-1)
    z_text = nn.functional.normalize(text - text.mean(0, keepdim=True), dim=-1)
    logits = z_mem @ z_text.T / temperature  # (B, B): row i = memory i against every document's text
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))
    acc = float((logits.detach().argmax(1) == target).float().mean())
    return loss, acc


def mean_pairwise_cosine(mem: torch.Tensor) -> float:
    """Mean cosine between the flattened memories of different documents (B, m, H); near 1 = collapse."""
    if mem.shape[0] < 2:
        return float("nan")
    flat = nn.functional.normalize(mem.reshape(mem.shape[0], -1).float(), dim=-1)  # (B, m·H)
    sims = flat @ flat.T  # (B, B)
    n = flat.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


# ---------------------------------------------------------------------------- the recipe


def build_scp_model(cfg: ClaraConfig):
    """ClaraModel with compressor + generator (``scp.train_adapters``) trainable (see :func:`set_scp_trainable`),
    the rest frozen.

    Starts from ``scp.init_adapters`` when set (e.g. to train the release further), else fresh LoRA.
    """
    from clara.model.loading import model_from_adapters

    model = model_from_adapters(cfg, cfg.scp.init_adapters, "scp.init_adapters", other_cr=cfg.scp.init_other_cr,
                                other_backbone=cfg.scp.init_other_backbone)
    set_scp_trainable(model, cfg.scp)
    return model


def set_scp_trainable(model, scp: ScpConfig) -> None:
    """Train ``scp.train_adapters`` (both of stage 1's by default), and the memory-token embeddings with the
    compressor: they are its input and are saved with it, so a generator-alone phase leaves the memory as loaded."""
    model.set_trainable([name for name in SCP_ADAPTERS if name in scp.train_adapters],
                        mem_embed="compressor" in scp.train_adapters)


def scp_dataset(cfg: ClaraConfig, data: str | Path | None, fresh: bool, skip_bad: bool = False) -> Sequence[ScpExample]:
    scp: ScpConfig = cfg.scp
    if fresh:
        t = cfg.train
        n = t.max_steps * t.batch_size * t.grad_accum  # every example is seen exactly once
        return FreshExamples(scp.fresh_seed, n, scp.data_types, scp)
    if not data:
        raise DataError("SCP needs data: give --data FILE (from `clara pretrain synth`) or --world-fresh")
    return load_examples(data, scp.data_types, skip_bad=skip_bad, scp=scp)


def train_scp(
    cfg: ClaraConfig,
    data: str | Path | None = None,
    *,
    fresh: bool = False,
    resume: bool = False,
    out_dir: str | Path | None = None,
    skip_bad: bool = False,
    model=None,
    allow_config_change: bool = False,
):
    """Run SCP on the shared Trainer; writes checkpoints, metrics.jsonl and ``out_dir/adapters``.

    ``model``: an already built ClaraModel (tests inspect it afterwards); default :func:`build_scp_model`.
    """
    from clara.training import ResumableBatches, Trainer

    out = Path(out_dir or cfg.out_dir)
    dataset = scp_dataset(cfg, data, fresh, skip_bad)
    if model is None:
        model = build_scp_model(cfg)
    else:
        set_scp_trainable(model, cfg.scp)
    objective = ScpObjective(model, cfg.scp)
    # fresh documents arrive in a random order already and are read once; a file is reshuffled per epoch
    batches = ResumableBatches(dataset, cfg.train.batch_size, list, seed=cfg.train.seed, shuffle=not fresh)
    trainer = Trainer(objective, cfg.train, out, lambda m, batch: m(batch), batches, config_for_hash=cfg,
                      allow_config_change=allow_config_change)
    result = trainer.train(resume=resume)
    if trainer.ctx.is_main:
        model.save_adapters(out / ADAPTERS_SUBDIR, SCP_ADAPTERS, prompt=GeneratorPrompt.SCP)
    return result


def export_checkpoint_adapters(cfg: ClaraConfig, checkpoint: str | Path, out: str | Path) -> Path:
    """Write the adapter directory of an SCP checkpoint (e.g. of a run stopped before its end)."""
    from clara.training.checkpoint import load_checkpoint, load_trainable

    checkpoint = Path(checkpoint)
    model = build_scp_model(cfg)
    ck = load_checkpoint(checkpoint)
    load_trainable(ScpObjective(model), ck.trainable, checkpoint / "trainable.safetensors")
    return model.save_adapters(out, SCP_ADAPTERS, prompt=GeneratorPrompt.SCP)
