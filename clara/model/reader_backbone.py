"""The reading LoRA (DESIGN §11): teach a backbone to answer from the document in its prompt.

SmolLM2-135M-Instruct *can* read but answers verbosely, so exact-match scores are near zero.
A short LoRA on open-book QA about fresh, never-repeating entities teaches the short-answer
format without teaching any fact the evaluation asks about (names are fresh, and the names of
evaluation worlds can be excluded). The LoRA is merged into the weights and saved as a normal
backbone directory, so every later stage simply uses the new backbone.

    out = train_reader("out/backbones/smollm2", "out/backbones/smollm2-reader", ReaderConfig(),
                       exclude_names=world_entity_names("out/world-0"))
    model, tok = load_backbone(out)   # clara_backbone.json records source hash + recipe

Prompts are built by :func:`clara.eval.reading.build_messages` with the same style the
reading evaluation uses, so the plain instruction works after training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from clara.model.backbone import BACKBONE_INFO, backbone_hash, load_backbone
from clara.config import LoraConfig, LRSchedule, TrainConfig, config_hash, to_dict
from clara.errors import ConfigError, OutputError
from clara.model.prompts import PROMPT_STYLES, build_messages
from clara.fileio import BACKBONE, TRAINING_RUN, atomic_dir, atomic_write_json, claim_output

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the HF causal-LM loss skips
RECIPE_VERSION = 1  # bump when the sample format or training changes meaning


@dataclass(frozen=True)
class ReaderConfig:
    """Everything that decides the reader's weights; it is recorded and forms the cache key."""

    steps: int = 80
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 5
    r: int = 16
    alpha: int = 32
    seed: int = 0  # LoRA init and batch order
    data_seed: int = 7919  # seed of the fresh-entity stream (not a world seed)
    style: str = "plain"  # prompt style of clara.eval.reading
    max_tokens: int = 512  # longer samples are dropped (fresh documents are ~100 tokens)
    save_every: int = 20
    version: int = RECIPE_VERSION

    def __post_init__(self):
        checks = [
            (self.steps >= 1, "steps", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.r >= 1, "r", "must be >= 1"),
            (self.style in PROMPT_STYLES, "style", f"must be one of {PROMPT_STYLES}"),
            (self.max_tokens >= 16, "max_tokens", "must be >= 16"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"reader recipe: {name}={getattr(self, name)!r} {what}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            lr=self.lr, warmup_steps=min(self.warmup_steps, self.steps - 1), schedule=LRSchedule.COSINE,
            max_steps=self.steps, batch_size=self.batch_size, seed=self.seed, log_every=1,
            save_every=self.save_every, keep_checkpoints=1,
        )

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, alpha=self.alpha, dropout=0.0)


@dataclass(frozen=True)
class _RunIdentity:
    """What a checkpoint of this run must match to be resumed (the Trainer hashes it)."""

    recipe: ReaderConfig
    source_hash: str
    exclude_sha: str
    train: TrainConfig


# ---------------------------------------------------------------- data


def world_entity_names(world_dir: str | Path) -> set[str]:
    """Every entity name of a world (one document per entity; its title is the name)."""
    from clara.world import load_world

    return {d["title"] for d in load_world(str(world_dir)).documents}


def _read_info(directory: Path) -> dict | None:
    try:
        return json.loads((directory / BACKBONE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def names_digest(names: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def fresh_qa_samples(n: int, seed: int, exclude_names: set[str] | None = None) -> list[dict]:
    """``n`` (document, question, answer) samples, one question per fresh document.

    One question per document (chosen at random) gives ``n`` distinct documents, so nothing
    repeats and the only thing to learn is reading.
    """
    rng = random.Random(f"clara-reader/{seed}")
    from clara.world import iter_fresh_documents

    samples = []
    for doc in itertools.islice(iter_fresh_documents(seed, exclude_names=exclude_names), n):
        qa = rng.choice(doc["qa"])
        samples.append({"id": doc["id"], "title": doc["title"], "document": doc["text"],
                        "question": qa["question"], "answer": qa["answer"]})
    return samples


def fresh_reading_questions(n: int, seed: int, exclude_names: set[str] | None = None) -> tuple[list[dict], dict]:
    """Held-out questions on fresh entities in the shape ``evaluate_reading`` takes: (questions, documents)."""
    samples = fresh_qa_samples(n, seed, exclude_names)
    questions = [{"id": f"{s['id']}-q", "type": "single_hop", "question": s["question"], "answers": [s["answer"]],
                  "gold_ids": [s["id"]]} for s in samples]
    return questions, {s["id"]: {"id": s["id"], "title": s["title"], "text": s["document"]} for s in samples}


def encode_sample(tok: Any, sample: dict, style: str) -> tuple[list[int], list[int]]:
    """Token ids and labels: the chat prompt (masked) then answer + EOS (learned).

    Prompt and answer are tokenised apart, exactly as generation sees them: the prompt
    through the chat template, the answer as the continuation after it.
    """
    messages = build_messages(sample["question"], sample["document"], style)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    answer_ids = tok(sample["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def encode_samples(tok: Any, samples: list[dict], style: str, max_tokens: int) -> list[tuple[list[int], list[int]]]:
    encoded = [encode_sample(tok, s, style) for s in samples]
    kept = [e for e in encoded if len(e[0]) <= max_tokens]
    if len(kept) < len(encoded):
        log.warning("dropped %d of %d reader samples longer than %d tokens", len(encoded) - len(kept),
                    len(encoded), max_tokens)
    return kept


def make_collate(pad_id: int):
    """Right-pad a list of (ids, labels) into tensors; padding is masked out of attention and loss."""
    import torch

    def collate(items: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        width = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(items), width), dtype=torch.long)  # (B, T)
        for row, (seq, lab) in enumerate(items):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def reader_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Mean cross-entropy over answer tokens only (the labels mask everything else)."""
    from clara.devices import module_device

    device = module_device(model)
    out = model(**{k: v.to(device) for k, v in batch.items()})
    return out.loss, {"tokens": float(batch["attention_mask"].sum()),
                      "answer_tokens": float((batch["labels"] != IGNORE_INDEX).sum())}


# ---------------------------------------------------------------- the recipe


def reader_is_cached(out_dir: Path, source_hash: str, recipe: ReaderConfig, exclude_sha: str) -> bool:
    info = _read_info(out_dir)
    reader = (info or {}).get("reader") or {}
    return (
        (out_dir / "config.json").is_file()
        and reader.get("source_hash") == source_hash
        and reader.get("recipe") == to_dict(recipe)
        and reader.get("exclude_names_sha256") == exclude_sha
    )


def _prepare_work_dir(work_dir: Path, identity_hash: str, hidden_default: bool) -> None:
    """Keep a half-finished run of this exact recipe (to resume). One of another recipe is cleared from the default
    hidden sibling, which only this command writes, and refused in a ``--work-dir`` the user named."""
    claim_output(work_dir, TRAINING_RUN)
    resolved = work_dir / "config.yaml"
    if not resolved.is_file():
        return
    first = resolved.read_text(encoding="utf-8").splitlines()[:1]
    if first != [f"# config hash: {identity_hash}"]:
        if not hidden_default:
            raise OutputError(f"{work_dir}: holds a training run of another recipe or source; refusing to clear "
                              "it: choose another --work-dir")
        log.warning("%s holds a run of another recipe or source; starting afresh", work_dir)
        shutil.rmtree(work_dir)


def train_reader(
    backbone: str | Path,
    out_dir: str | Path,
    recipe: ReaderConfig = ReaderConfig(),
    *,
    exclude_names: set[str] | None = None,
    work_dir: str | Path | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train the reading LoRA on ``backbone``, merge it, and write a new backbone to ``out_dir``.

    Cached: nothing is done if ``out_dir`` already records the same source hash, recipe and
    excluded names (``force`` trains again). Another backbone there is replaced only with
    ``overwrite``; anything else there is refused. Training checkpoints go to ``work_dir``
    (default: a hidden sibling of ``out_dir``) so an interrupted run resumes; it is removed once
    the backbone is written.
    """
    import torch

    from clara.model.adapters import lora_model
    from clara.training import ResumableBatches, Trainer

    backbone, out_dir = Path(backbone), Path(out_dir)
    source_hash = backbone_hash(backbone)
    exclude_sha = names_digest(exclude_names or ())
    cached = out_dir.is_dir() and reader_is_cached(out_dir, source_hash, recipe, exclude_sha)
    if cached and not force:
        log.info("reader backbone %s already trained from %s with this recipe; skipping", out_dir, source_hash)
        return out_dir
    claim_output(out_dir, BACKBONE, overwrite=overwrite or cached)  # its own build may be redone
    hidden_default = not work_dir
    work_dir = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.train"
    identity = _RunIdentity(recipe, source_hash, exclude_sha, recipe.train_config())
    _prepare_work_dir(work_dir, config_hash(identity), hidden_default)

    model, tok = load_backbone(backbone)
    n_samples = recipe.steps * recipe.batch_size  # every step sees new documents
    samples = fresh_qa_samples(n_samples, recipe.data_seed, exclude_names)
    data = encode_samples(tok, samples, recipe.style, recipe.max_tokens)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = ResumableBatches(data, recipe.batch_size, make_collate(pad_id), seed=recipe.seed)

    torch.manual_seed(recipe.seed)  # LoRA A matrices are random-initialised
    peft_model = lora_model(model, recipe.lora_config())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info("reader LoRA: %d trainable parameters, %d samples, %d steps", trainable, len(data), recipe.steps)
    trainer = Trainer(peft_model, identity.train, work_dir, reader_loss, batches, config_for_hash=identity)
    start = time.perf_counter()
    result = trainer.train(resume=True)
    seconds = time.perf_counter() - start

    merged = peft_model.merge_and_unload()
    merged.eval()
    _save_reader(merged, tok, backbone, out_dir, work_dir, {
        "source": str(backbone), "source_hash": source_hash, "recipe": to_dict(recipe),
        "exclude_names_sha256": exclude_sha, "excluded_names": len(exclude_names or ()),
        "steps": result.step, "resumed_from": result.resumed_from, "train_seconds_this_run": round(seconds, 1),
        "final_loss": next((x for x in reversed(result.losses) if x is not None), None),
        "trainable_params": trainable, "samples": len(data),
    })
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def _save_reader(model: Any, tok: Any, backbone: Path, out_dir: Path, work_dir: Path, reader: dict) -> None:
    """Write the merged model, tokenizer (with chat template) and provenance, atomically."""
    source_info = _read_info(backbone) or {}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if (work_dir / "metrics.jsonl").is_file():
            shutil.copyfile(work_dir / "metrics.jsonl", tmp / "reader_metrics.jsonl")
        info = {k: v for k, v in source_info.items() if k not in ("reader",)}
        info.update({"kind": source_info.get("kind", "hf"), "reader": reader,
                     "params": sum(p.numel() for p in model.parameters())})
        atomic_write_json(tmp / BACKBONE_INFO, info)
    log.info("reader backbone written to %s (%d steps, final loss %s)", out_dir, reader["steps"], reader["final_loss"])


def describe(out_dir: str | Path) -> dict:
    """The ``reader`` record of a reader backbone's clara_backbone.json (empty if none)."""
    return (_read_info(Path(out_dir)) or {}).get("reader") or {}


__all__ = [
    "ReaderConfig", "encode_sample", "fresh_qa_samples", "fresh_reading_questions", "reader_is_cached",
    "train_reader", "world_entity_names", "describe",
]
