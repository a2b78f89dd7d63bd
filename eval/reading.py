"""Can the backbone read? Open-book vs closed-book answering on world questions (DESIGN §11).

*Open book*: the gold document(s) as text in the prompt, then the question. *Closed book*:
the question only. Greedy decoding through the backbone's chat template, batched with left
padding. The reply is cut to its first line (and a leading "Answer:" dropped) before scoring
EM / F1 / Cover-EM; the raw reply's Cover-EM is reported beside it, so a verbose model that
does contain the answer is visible as such.

    result = evaluate_reading(model, tok, questions, documents, settings=("open_book", "closed_book"))
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from clara.errors import DataError
from clara.answers import answer_scores, cover_em
from clara.model.prompts import build_messages, extract_answer

log = logging.getLogger(__name__)

SETTINGS = ("open_book", "closed_book")
def gold_text(question: dict, documents: dict[str, dict]) -> str:
    """The text of a question's gold document(s), joined in gold order."""
    try:
        return "\n\n".join(documents[d]["text"] for d in question["gold_ids"])
    except KeyError as e:
        raise DataError(f"question {question.get('id')}: gold document {e} not in the corpus") from None


def generate_replies(
    model: Any,
    tok: Any,
    conversations: Sequence[list[dict[str, str]]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    desc: str = "generate",
) -> tuple[list[str], dict[str, float]]:
    """Greedy replies for chat conversations; returns (replies, {prompt_tokens, new_tokens, seconds})."""
    import torch

    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # similar lengths share a batch: less padding
    replies: list[str] = [""] * len(prompts)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stats = {"prompt_tokens": float(sum(lengths)), "new_tokens": 0.0, "seconds": 0.0}
    tok.padding_side = "left"  # the last prompt token must sit at the last position
    start = time.perf_counter()
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[b : b + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                eos_token_id=tok.eos_token_id,
            )
        new = out[:, enc.input_ids.shape[1] :]  # (B, <= max_new_tokens)
        for row, i in zip(new, idx):
            ids = row.tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            stats["new_tokens"] += len(ids)
            replies[i] = tok.decode(ids, skip_special_tokens=True)
    stats["seconds"] = time.perf_counter() - start
    return replies, stats


def select_questions(
    questions: Iterable[dict], *, types: Sequence[str] | None = ("single_hop",), limit: int | None = None
) -> list[dict]:
    chosen = [q for q in questions if not types or q.get("type") in types]
    return chosen[:limit] if limit else chosen


def evaluate_reading(
    model: Any,
    tok: Any,
    questions: Sequence[dict],
    documents: Iterable[dict] | dict[str, dict],
    *,
    settings: Sequence[str] = SETTINGS,
    style: str = "fewshot",
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Score open-book and/or closed-book answers; returns metrics per setting and per-question records."""
    docs = documents if isinstance(documents, dict) else {d["id"]: d for d in documents}
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; choose from {SETTINGS}")
    golds = [list(q["answers"]) for q in questions]
    records = [{"id": q["id"], "question": q["question"], "answers": g} for q, g in zip(questions, golds)]
    results: dict[str, Any] = {"n": len(questions), "style": style, "max_new_tokens": max_new_tokens, "settings": {}}
    for setting in settings:
        convs = [
            build_messages(q["question"], gold_text(q, docs) if setting == "open_book" else None, style)
            for q in questions
        ]
        replies, stats = generate_replies(
            model, tok, convs, batch_size=batch_size, max_new_tokens=max_new_tokens, desc=setting
        )
        preds = [extract_answer(r) for r in replies]
        scores = answer_scores(preds, golds)
        scores["raw_cover_em"] = sum(cover_em(r, g) for r, g in zip(replies, golds)) / max(len(replies), 1)
        scores.update(stats)
        scores["new_tokens_per_s"] = stats["new_tokens"] / max(stats["seconds"], 1e-9)
        scores["prompt_tokens_per_s"] = stats["prompt_tokens"] / max(stats["seconds"], 1e-9)
        results["settings"][setting] = scores
        for rec, reply, pred in zip(records, replies, preds):
            rec[setting] = {"reply": reply, "prediction": pred}
        log.info("%s: EM %.3f F1 %.3f Cover-EM %.3f (n=%d, %.1f s)", setting, scores["em"], scores["f1"],
                 scores["cover_em"], len(questions), stats["seconds"])
    results["records"] = records
    return results


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the per-setting scores."""
    lines = [
        "| setting | n | EM | F1 | Cover-EM | raw-reply Cover-EM | new tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, s in results["settings"].items():
        lines.append(
            f"| {setting} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} | "
            f"{s['raw_cover_em']:.3f} | {s['new_tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def load_world_questions(
    world_dir: str, splits: Sequence[str], types: Sequence[str] | None, limit: int | None
) -> tuple[list[dict], dict[str, dict]]:
    """Questions of ``types`` from the given splits (in split order, first ``limit``) and the document index."""
    from clara.world import load_world

    world = load_world(world_dir)
    questions = []
    for split in splits:
        if split not in world.questions:
            raise DataError(f"{world_dir}: no split {split!r}; the world has {sorted(world.questions)}")
        questions += world.questions[split]
    chosen = select_questions(questions, types=types, limit=limit)
    if not chosen:
        raise DataError(f"{world_dir}: no questions of types {list(types or [])} in splits {list(splits)}")
    return chosen, world.document_index()


def run_reading_eval(
    backbone: str,
    world_dir: str,
    *,
    kind: str = "hf",
    splits: Sequence[str] = ("test",),
    types: Sequence[str] | None = ("single_hop",),
    limit: int | None = 100,
    settings: Sequence[str] = SETTINGS,
    style: str = "fewshot",
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Load a backbone and a world, evaluate reading; the result records what was evaluated."""
    from clara.model.backbone import backbone_hash, load_backbone

    questions, documents = load_world_questions(world_dir, splits, types, limit)
    model, tok = load_backbone(backbone, kind)
    results = evaluate_reading(
        model, tok, questions, documents, settings=settings, style=style,
        batch_size=batch_size, max_new_tokens=max_new_tokens,
    )
    results.update({
        "backbone": str(backbone), "backbone_hash": backbone_hash(backbone), "world": str(world_dir),
        "splits": list(splits), "types": list(types or []), "limit": limit,
    })  # fmt: skip
    return results
