"""Compression evaluation (DESIGN §10, §11): can the generator answer from a document's memory alone?

For held-out world entities (``test_unseen`` by default), each single-hop question is answered
in four settings on the same backbone — or, with ``data`` (``--data FILE``), each QA pair of
pretraining records (project or reference format, :class:`clara.data.records.PretrainRecord`)
is a question whose gold document is its record's ``doc``, scored per ``source`` as well:

- ``memory``        — the gold document compressed by the compressor; the generator sees only mem;
- ``wrong_memory``  — another document's memory (the ablation of §11: equal to ``memory`` means
                      the memory is ignored, whatever the loss says);
- ``raw_text``      — the bare backbone with the document as text in its prompt (eval.reading);
- ``closed_book``   — the bare backbone, question only.

Beside the answer scores: the mean pairwise cosine between compressed documents (flattened and
mean-pooled; near 1 is collapse), and the generator's teacher-forced loss on the QA target with
the right and with a wrong memory (a graded signal that moves before EM does).

With ``prompt="scp"`` (after SCP) the generator is asked the SCP QA instruction and its reply is
forced to start ``Question: <q>\\nAnswer:`` — the exact format SCP trained; the answer is the rest
of that line. With ``prompt="direct"`` (after ``clara pretrain instruct``) the question is asked as is.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from clara.errors import CheckpointError, DataError
from clara.model.loading import load_trained_model, read_model_info, resolve_adapters_dir
from clara.answers import answer_scores, cover_em
from clara.eval.reading import evaluate_reading, load_world_questions
from clara.model.prompts import extract_answer
from clara.data.records import Document

log = logging.getLogger(__name__)

SETTINGS = ("memory", "wrong_memory", "raw_text", "closed_book")
PROMPTS = ("scp", "direct")


def document_text(doc: dict) -> str:
    """The text SCP compressed for a world document: title line, then the article (as synth writes it)."""
    return Document(text=doc["text"], title=doc.get("title", "")).as_text()


def wrong_indices(doc_ids: Sequence[str]) -> list[int]:
    """For each item, the nearest later item (cyclically) about a *different* document."""
    n = len(doc_ids)
    if len(set(doc_ids)) < 2:
        raise DataError("the wrong-memory ablation needs questions about at least two different documents")
    out = []
    for i in range(n):
        j = next(k % n for k in range(i + 1, i + n + 1) if doc_ids[k % n] != doc_ids[i])
        out.append(j)
    return out


@torch.no_grad()
def compress_all(model, texts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """Memory of every text (N, m, W), batched (W = H unless the generator reads keys and values)."""
    was_training = model.training
    model.eval()
    try:
        parts = [model.compress(list(texts[i : i + batch_size])) for i in
                 tqdm(range(0, len(texts), batch_size), desc="compress", unit="batch")]  # fmt: skip
    finally:
        model.train(was_training)
    return torch.cat(parts).float()  # (N, m, W)


def memory_spread(mem: torch.Tensor) -> dict[str, float]:
    """Spread of distinct documents' memories (N, m, H): mean pairwise cosine flattened (m·H) and
    mean-pooled (H) — near 1 is collapse (DESIGN §11), though it is high even untrained because
    last-layer states share a large common direction — and the share of variance that differs
    between documents (0 = every document has the same memory). A cosine after removing the mean
    over documents is not reported: it is about -1/(N-1) by construction, whatever the model."""
    from clara.pretrain.scp import mean_pairwise_cosine

    return {"mem_cos": mean_pairwise_cosine(mem), "mem_cos_pooled": mean_pairwise_cosine(mem.mean(1, keepdim=True)),
            "mem_between_share": _between_over_total(mem)}


def _between_over_total(mem: torch.Tensor) -> float:
    """Share of memory variance that differs between documents (0 = every document the same memory)."""
    flat = mem.reshape(mem.shape[0], -1).float()  # (N, m·H)
    between = (flat - flat.mean(0)).pow(2).mean()
    total = flat.pow(2).mean()
    return float(between / total.clamp(min=1e-12))


@torch.no_grad()
def answer_from_memory(model, questions: Sequence[str], mem: torch.Tensor | None, *, prompt: str = "scp",
                       batch_size: int = 8, max_new_tokens: int = 16, desc: str = "memory",
                       before: Sequence[str] | None = None, documents: Sequence[str] | None = None) -> list[str]:  # fmt: skip
    """Greedy answers, one per question from its memory mem (N, m, H). ``prompt="scp"``: the SCP QA
    instruction with the reply forced to start ``Question: q\nAnswer:``, after ``before[i]`` when given
    (e.g. the QA lines that precede the question in a training target). ``documents`` (mem None):
    each question's document as text where its memory would go (``scp.read_text``'s view)."""
    from clara.model.prompts import QA_INSTRUCTION

    replies = []
    for i in tqdm(range(0, len(questions), batch_size), desc=desc, unit="batch"):
        qs = list(questions[i : i + batch_size])
        m = None if mem is None else mem[i : i + batch_size, None]
        docs = None if documents is None else list(documents[i : i + batch_size])
        if prompt == "scp":
            pre = before[i : i + batch_size] if before is not None else [""] * len(qs)
            replies += model.generate([QA_INSTRUCTION] * len(qs), m, max_new_tokens=max_new_tokens, stop=("\n",),
                                      reply_prefixes=[f"{b}Question: {q}\nAnswer:" for b, q in zip(pre, qs)],
                                      documents=docs)
        else:
            replies += model.generate(qs, m, max_new_tokens=max_new_tokens, stop=("\n",), documents=docs)
    return replies


def _relation(q: dict) -> str:
    return q.get("relation") or q.get("type", "")


def answer_choices(qs: Sequence[dict], n_choices: int = 4, seed: int = 0) -> list[list[str]]:
    """Per question: its first gold answer, then up to ``n_choices - 1`` answers that other questions of
    the same relation have (e.g. other birth cities), so the choice needs the document, not the type."""
    rng = random.Random(seed)
    by_relation: dict[str, set[str]] = {}
    for q in qs:
        by_relation.setdefault(_relation(q), set()).add(q["answers"][0])
    out = []
    for q in qs:
        pool = sorted(by_relation[_relation(q)] - set(q["answers"]))
        out.append([q["answers"][0]] + rng.sample(pool, min(n_choices - 1, len(pool))))
    return out


@torch.no_grad()
def answer_losses(model, questions: Sequence[str], answers: Sequence[str], mem: torch.Tensor, *,
                  reduction: str = "none", batch_size: int = 8) -> torch.Tensor:
    """Teacher-forced loss of ``Question: q\nAnswer: a`` given mem (N, m, H), one per row (N,) on the CPU;
    ``reduction`` as in ``ClaraModel.generator_loss`` ("none": mean per token, "sum": the answer's NLL)."""
    from clara.model.prompts import QA_INSTRUCTION

    out = torch.empty(len(questions))
    for i in range(0, len(questions), batch_size):
        qs, ans = questions[i : i + batch_size], answers[i : i + batch_size]
        targets = [f"Question: {q}\nAnswer: {a}" for q, a in zip(qs, ans)]
        out[i : i + len(qs)] = model.generator_loss([QA_INSTRUCTION] * len(qs), mem[i : i + batch_size, None].to(
            model.device), targets, reduction=reduction).float().cpu()  # fmt: skip
    return out


def choice_accuracy(model, questions: Sequence[str], choices: Sequence[Sequence[str]], mem: torch.Tensor,
                    batch_size: int = 8) -> float:
    """Share of questions whose gold answer (``choices[i][0]``) is strictly likelier, given mem (N, m, H),
    than every other choice.

    More sensitive than greedy EM early in training: an answer can be ranked first long before it is
    generated letter by letter. Questions with a single choice are skipped; chance is 1/len(choices[i]).
    """
    rows = [(i, c) for i, cs in enumerate(choices) if len(cs) > 1 for c in range(len(cs))]
    if not rows:
        return float("nan")
    idx = torch.tensor([i for i, _ in rows])
    nll = answer_losses(model, [questions[i] for i, _ in rows], [choices[i][c] for i, c in rows], mem[idx],
                        reduction="sum", batch_size=batch_size)  # fmt: skip
    per_q: dict[int, list[float]] = {}
    for (i, _), v in zip(rows, nll.tolist()):
        per_q.setdefault(i, []).append(v)
    # a tie is not a win: the gold must be strictly likelier than every other choice
    return sum(v[0] < min(v[1:]) for v in per_q.values()) / len(per_q)


def evaluate_compression(
    model,
    questions: Sequence[dict],
    documents: dict[str, dict],
    *,
    settings: Sequence[str] = SETTINGS,
    prompt: str = "scp",
    style: str = "fewshot",
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Scores per setting, memory spread and right/wrong-memory target loss for single-gold questions."""
    unknown = set(settings) - set(SETTINGS)
    if unknown or prompt not in PROMPTS:
        raise ValueError(f"settings must be from {SETTINGS} (got {sorted(unknown)}), prompt from {PROMPTS}")
    qs = [q for q in questions if len(q["gold_ids"]) == 1]
    if len(qs) < 2:
        raise DataError(f"compression eval needs at least 2 single-document questions, got {len(qs)}")
    doc_ids = [q["gold_ids"][0] for q in qs]
    wrong = wrong_indices(doc_ids)
    unique = list(dict.fromkeys(doc_ids))
    mem_unique = compress_all(model, [document_text(documents[d]) for d in unique], batch_size)  # (D, m, H)
    where = {d: i for i, d in enumerate(unique)}
    mem = mem_unique[[where[d] for d in doc_ids]]  # (N, m, H)
    golds = [list(q["answers"]) for q in qs]
    texts = [q["question"] for q in qs]
    results: dict[str, Any] = {"n": len(qs), "documents": len(unique), "prompt": prompt, "settings": {},
                               "num_mem": model.num_mem, "chunk_len": model.chunk_len, **memory_spread(model.memory_states(mem_unique))}  # fmt: skip
    records = [{"id": q["id"], "question": q["question"], "answers": g, "doc_id": d, "wrong_doc_id": doc_ids[w],
                **({"source": q["source"]} if "source" in q else {})} for q, g, d, w in zip(qs, golds, doc_ids, wrong)]  # fmt: skip
    for setting, m in (("memory", mem), ("wrong_memory", mem[wrong])):
        if setting not in settings:
            continue
        replies = answer_from_memory(model, texts, m, prompt=prompt, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, desc=setting)  # fmt: skip
        preds = [extract_answer(r) for r in replies]
        scores = answer_scores(preds, golds)
        scores["raw_cover_em"] = sum(cover_em(r, g) for r, g in zip(replies, golds)) / len(replies)
        results["settings"][setting] = scores
        for rec, reply, pred in zip(records, replies, preds):
            rec[setting] = {"reply": reply, "prediction": pred}
    results["em_by_relation"] = em_by_relation(qs, records, [s for s in ("memory", "wrong_memory") if s in settings])
    first = [g[0] for g in golds]
    for key, m in (("nll_right", mem), ("nll_wrong", mem[wrong])):
        losses = answer_losses(model, texts, first, m, batch_size=batch_size)  # (N,)
        results[key] = float(losses.mean())
        for rec, loss in zip(records, losses.tolist()):
            rec[key] = loss
    choices = answer_choices(qs)
    results["choices"] = sum(len(c) for c in choices) / len(choices)
    results["choice_right"] = choice_accuracy(model, texts, choices, mem, batch_size)
    results["choice_wrong"] = choice_accuracy(model, texts, choices, mem[wrong], batch_size)
    text_settings = [s for s, r in (("raw_text", "open_book"), ("closed_book", "closed_book")) if s in settings]
    if text_settings:
        names = {"raw_text": "open_book", "closed_book": "closed_book"}
        with model.using(None):  # the bare backbone: the same weights the adapters sit on
            reading = evaluate_reading(model.lm, model.tokenizer, qs, documents, style=style, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, settings=[names[s] for s in text_settings])  # fmt: skip
        for s in text_settings:
            results["settings"][s] = reading["settings"][names[s]]
            for rec, r in zip(records, reading["records"]):
                rec[s] = r[names[s]]
    results["settings"] = {s: results["settings"][s] for s in SETTINGS if s in results["settings"]}
    if any("source" in q for q in qs):
        results["by_source"] = scores_by_group([rec.get("source", "?") for rec in records], records, list(results["settings"]))
    results["records"] = records
    return results


def scores_by_group(groups: Sequence[str], records: Sequence[dict], settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per group (sorted): the count ``n``, each setting's answer scores, and the mean of each per-record
    ``nll_right`` / ``nll_wrong`` the records carry."""
    members: dict[str, list[dict]] = {}
    for group, rec in zip(groups, records):
        members.setdefault(group, []).append(rec)
    out: dict[str, dict[str, Any]] = {}
    for group, recs in sorted(members.items()):
        row: dict[str, Any] = {"n": len(recs)}
        for s in settings:
            row[s] = answer_scores([r[s]["prediction"] for r in recs], [r["answers"] for r in recs])
        for key in ("nll_right", "nll_wrong"):
            if all(key in r for r in recs):
                row[key] = sum(r[key] for r in recs) / len(recs)
        out[group] = row
    return out


def em_by_relation(qs: Sequence[dict], records: Sequence[dict], settings: Sequence[str]) -> dict[str, dict[str, float]]:
    """EM per question relation (birth_city, employer, ...) for each memory setting, with the count ``n``.

    A compressor can keep some facts of a document and drop others (a target cut at max_target_tokens
    never trains the later ones); the mean over all questions hides which."""
    groups = scores_by_group([_relation(q) or "?" for q in qs], records, settings)
    return {g: {"n": row["n"], **{s: row[s]["em"] for s in settings}} for g, row in groups.items()}


def load_data_questions(paths: Sequence[str], limit: int | None) -> tuple[list[dict], dict[str, dict], int]:
    """Questions from the QA pairs of pretraining records (the first ``limit``), their documents by id
    (``file:line`` of the first record with that text) and the count of paraphrase records skipped.

    A question's ``source`` is its record's, else the file's name."""
    from clara.data.jsonl import ReadStats, iter_records
    from clara.data.records import DataType

    questions: list[dict] = []
    documents: dict[str, dict] = {}
    id_of_text: dict[str, str] = {}  # one document per distinct text, so wrong memory is another text
    skipped = 0
    for path in paths:
        stats = ReadStats(str(path))
        for rec in iter_records(path, "pretrain", stats=stats):
            if rec.data_type is not DataType.QA:
                skipped += 1
                continue
            where = f"{path}:{stats.line}"
            doc_id = id_of_text.setdefault(rec.doc, where)
            documents.setdefault(doc_id, {"id": doc_id, "title": "", "text": rec.doc})
            source = rec.source or Path(path).name
            questions += [{"id": f"{where}#{k}", "question": p.question, "answers": [p.answer], "gold_ids": [doc_id],
                           "source": source} for k, p in enumerate(rec.pairs)]  # fmt: skip
    if not questions:
        raise DataError(f"{', '.join(map(str, paths))}: no qa records ({skipped} paraphrase record(s) skipped); "
                        "--data takes pretraining records of data_type qa")  # fmt: skip
    return questions[:limit] if limit else questions, documents, skipped


# ---------------------------------------------------------------------------- checkpoints and the table


def run_compression_eval(
    models: Sequence[str], world_dir: str | None = None, *, data: Sequence[str] = (), crs: Sequence[int] = (),
    backbone: str | None = None, splits: Sequence[str] = ("test_unseen",), types: Sequence[str] = ("single_hop",),
    limit: int | None = 100, precision: str = "auto", **kw,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate each checkpoint on the same questions — the world's, or with ``data`` those of
    pretraining record files — and with ``crs``, only (and all of) those rates; the models run in
    ``precision`` (auto: bf16 where the CPU runs it natively)."""
    if data:
        questions, documents, skipped = load_data_questions(data, limit)
        evaluated: dict[str, Any] = {"data": [str(p) for p in data], "skipped_paraphrase": skipped}
    elif world_dir:
        questions, documents = load_world_questions(world_dir, splits, types, limit)
        evaluated = {"world": str(world_dir), "splits": list(splits), "types": list(types)}
    else:
        raise DataError("nothing to evaluate on; give a world directory or data files")
    runs = []
    seen_crs = set()
    for path in models:
        adapters = resolve_adapters_dir(path)
        info = read_model_info(adapters)
        cr = info["chunk_len"] // info["num_mem"]
        if crs and cr not in crs:
            log.info("%s: CR %d not in --cr, skipped", adapters, cr)
            continue
        model = load_trained_model(adapters, backbone, precision=precision)
        res = evaluate_compression(model, questions, documents, **kw)
        res.update({"model": str(adapters), "cr": cr, "backbone": str(backbone or info["backbone"]),
                    "backbone_hash": model.backbone_hash, "precision": model.inference_precision.value})  # fmt: skip
        runs.append(res)
        seen_crs.add(cr)
        # the text baselines do not depend on the adapters: evaluate them once
        kw = {**kw, "settings": [s for s in kw.get("settings", SETTINGS) if s in ("memory", "wrong_memory")]}
    missing = sorted(set(crs) - seen_crs)
    if missing:
        raise CheckpointError(f"--cr {','.join(map(str, missing))}: no checkpoint among --model has that compression rate")
    if not runs:
        raise CheckpointError("no checkpoint to evaluate; pass --model RUN_OR_ADAPTER_DIR")
    return {**evaluated, "runs": runs}


def format_table(results: dict[str, Any]) -> str:
    lines = ["| CR | setting | n | EM | F1 | Cover-EM | raw Cover-EM | char sim |", "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for setting, s in run["settings"].items():
            lines.append(f"| {run['cr']} | {setting} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} | "
                         f"{s.get('raw_cover_em', float('nan')):.3f} | {s.get('char_sim', float('nan')):.3f} |")  # fmt: skip
    lines.append("")
    lines.append("| CR | m | mean pairwise cos (flat) | (pooled) | between-doc var share | "
                 "target NLL right mem | wrong mem | choice acc right mem | wrong mem (of) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        lines.append(f"| {run['cr']} | {run['num_mem']} | {run['mem_cos']:.4f} | {run['mem_cos_pooled']:.4f} | "
                     f"{run['mem_between_share']:.4f} | "
                     f"{run['nll_right']:.4f} | {run['nll_wrong']:.4f} | {run.get('choice_right', float('nan')):.3f} | "
                     f"{run.get('choice_wrong', float('nan')):.3f} ({run.get('choices', float('nan')):.1f}) |")  # fmt: skip
    if any("by_source" in run for run in results["runs"]):
        return "\n".join(lines + ["", source_table(results)])
    lines += ["", "| CR | relation | n | EM memory | EM wrong memory |", "|---|---|---|---|---|"]
    for run in results["runs"]:
        for rel, row in run.get("em_by_relation", {}).items():
            lines.append(f"| {run['cr']} | {rel} | {row['n']} | {row.get('memory', float('nan')):.3f} | "
                         f"{row.get('wrong_memory', float('nan')):.3f} |")  # fmt: skip
    return "\n".join(lines)


def source_table(results: dict[str, Any]) -> str:
    """Scores per source and over all (``all``); the target NLL is the right memory's on the memory row
    and the wrong memory's on the wrong-memory row."""
    nll_of = {"memory": "nll_right", "wrong_memory": "nll_wrong"}
    lines = ["| CR | source | setting | n | EM | F1 | Cover-EM | target NLL |", "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        rows = {**run.get("by_source", {}), "all": {"n": run["n"], **run["settings"], **{k: run[k] for k in nll_of.values()}}}
        for source, row in rows.items():
            for setting in run["settings"]:
                s, nll = row[setting], row.get(nll_of.get(setting, ""))
                lines.append(f"| {run['cr']} | {source} | {setting} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | "
                             f"{s['cover_em']:.3f} | {'-' if nll is None else f'{nll:.4f}'} |")  # fmt: skip
    return "\n".join(lines)
