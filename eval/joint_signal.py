"""What the generator's loss tells the query reasoner in joint training (DESIGN §5, §11: measure why).

    python -m clara.eval.joint_signal configs/joint-smollm2.yaml joint.init_adapters=RUN [--model JOINT/adapters] --n 64

On training questions, with the joint objective's own forward (cached candidate memory, straight-through
top-k, generator loss on the answer):

- **score gradient**: dL/ds over the N candidates, the only signal the query adapter receives. A descent
  step raises the scores whose gradient is most negative, so *gold first* is the share of questions whose
  gold candidate has the most negative gradient (chance 1/N), beside the gold's mean rank by gradient.
- **single-document losses**: the generator's loss with one candidate's memory alone, over the top-``m``
  candidates by score (the gold swapped in for the last when absent); *loss picks gold* is the share of
  questions whose gold gives the lowest loss — the target a retriever distilled from the generator's
  preferences (no labels) would learn — beside the retriever's own R@1 on the same questions, and the
  same share for the bare backbone reading each candidate as text (what a perfect compressor could give).
- **counterfactual**: the generator's loss on the hard top-k with the gold document among the k (swapped
  in for the last pick when it was not) against the same set without it (swapped for the best other
  candidate). A positive *gold helps* margin is what a retriever could learn from; zero means the
  generator's loss does not care whether the gold memory is there.

No relevance label is used by training; this diagnostic reads ``pos_index`` only to report.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Sequence

import torch

from clara.joint.objective import asked_generator_loss, select_memory
from clara.model.scoring import model_scores


def score_gradient_stats(grad: torch.Tensor, golds: Sequence[Sequence[int]]) -> dict[str, float]:
    """grad (B, N) of the loss w.r.t. the scores; per question the best-ranked gold by ascending gradient."""
    order = grad.argsort(dim=1)  # most negative first: what one descent step raises most
    ranks = []
    for row, gold in zip(order.tolist(), golds):
        ranks.append(min(row.index(g) for g in gold) + 1)
    return {"gold_first": sum(r == 1 for r in ranks) / len(ranks), "gold_mean_rank": statistics.fmean(ranks),
            "chance_first": 1.0 / grad.shape[1]}  # fmt: skip


def with_and_without_gold(picks: Sequence[int], scores: Sequence[float], gold: Sequence[int]) -> tuple[list[int], list[int]]:
    """The hard top-k ``picks`` as two sets of k: one holding a gold candidate, one holding none."""
    picks = list(picks)
    gold_set = set(gold)
    others = [n for n in sorted(range(len(scores)), key=lambda n: -scores[n]) if n not in gold_set and n not in picks]
    if gold_set & set(picks):
        without = [p if p not in gold_set else others.pop(0) for p in picks]
        return picks, without
    return picks[:-1] + [gold[0]], picks


@torch.no_grad()
def _losses(model, questions, answers, mem, sets, max_answer_len, prompt) -> list[float]:
    blocks = torch.stack([mem[b, s] for b, s in enumerate(sets)])  # (B, k, m, H)
    return asked_generator_loss(model, questions, blocks, answers, prompt, max_answer_len=max_answer_len,
                                reduction="none").tolist()  # fmt: skip


@torch.no_grad()
def single_document_first(model, questions, answers, mem, scores, batch, top: int, max_answer_len: int,
                          prompt: str = "direct") -> tuple[list[bool], list[bool]]:  # fmt: skip
    """Per question, among the top-``top`` candidates by score (gold swapped in for the last when absent):
    does the gold give the lowest loss (1) to the generator reading each candidate's memory alone, and
    (2) to the bare backbone reading each candidate as text (the prompt of raw-text RAG)?"""
    from clara.eval.baselines import raw_text_prompt

    top = min(top, scores.shape[1])
    from_memory, from_text = [], []
    for b, r in enumerate(batch):
        cands = scores[b].argsort(descending=True)[:top].tolist()
        if not set(r.pos_index) & set(cands):
            cands[-1] = r.pos_index[0]
        blocks = mem[b, cands][:, None]  # (top, 1, m, H): one memory block each
        losses = asked_generator_loss(model, [questions[b]] * top, blocks, [answers[b]] * top, prompt,
                                      max_answer_len=max_answer_len, reduction="none")  # fmt: skip
        from_memory.append(cands[int(losses.argmin())] in set(r.pos_index))
        prompts = [raw_text_prompt(questions[b], [r.candidates[c].as_text()]) for c in cands]
        losses = model.generator_loss(prompts, None, [answers[b]] * top, adapter=None,
                                      max_answer_len=max_answer_len, reduction="none")  # fmt: skip
        from_text.append(cands[int(losses.argmin())] in set(r.pos_index))
    return from_memory, from_text


def measure(model, cache, records: Sequence, cfg, batch_size: int = 8, top: int = 8) -> dict[str, Any]:
    model.eval()  # no dropout; gradients still flow
    grads, golds, helps, memory_first, text_first, retriever_first = [], [], [], [], [], []
    for start in range(0, len(records), batch_size):
        batch = [r for r in records[start : start + batch_size] if r.pos_index]
        if not batch:
            continue
        questions, answers = [r.question for r in batch], [r.answers[0] for r in batch]
        mem = cache.candidates(batch, model.device)  # (B, N, m, H)
        scores = model_scores(model, model.encode_query(questions), mem, cfg.scoring)
        scores.retain_grad()
        selected, _, picks = select_memory(scores, mem, cfg.top_k, cfg.temperature)
        asked_generator_loss(model, questions, selected, answers, cfg.prompt, max_answer_len=cfg.max_answer_len).backward()
        model.zero_grad(set_to_none=True)
        grads.append(scores.grad.detach().float())
        retriever_first += [int(s.argmax()) in set(r.pos_index) for s, r in zip(scores.detach(), batch)]
        golds += [r.pos_index for r in batch]
        pairs = [with_and_without_gold(p, s, r.pos_index) for p, s, r in zip(picks.tolist(), scores.tolist(), batch)]
        with_gold = _losses(model, questions, answers, mem, [w for w, _ in pairs], cfg.max_answer_len, cfg.prompt)
        without = _losses(model, questions, answers, mem, [wo for _, wo in pairs], cfg.max_answer_len, cfg.prompt)
        helps += [b - a for a, b in zip(with_gold, without)]
        from_memory, from_text = single_document_first(model, questions, answers, mem, scores.detach(), batch, top,
                                                       cfg.max_answer_len, cfg.prompt)  # fmt: skip
        memory_first += from_memory
        text_first += from_text
    stats = score_gradient_stats(torch.cat(grads), golds)
    stats.update(single_top=top, loss_picks_gold=statistics.fmean(memory_first),
                 text_loss_picks_gold=statistics.fmean(text_first),  # the same, reading raw text
                 retriever_r1=statistics.fmean(retriever_first),  # the student's own R@1 here
                 n=len(golds), gold_helps_share=statistics.fmean(h > 0 for h in helps),
                 gold_helps_mean=statistics.fmean(helps), gold_helps_median=statistics.median(helps))  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> int:
    from clara.cli.args import add_run_arguments, load_run_config
    from clara.model.memory_cache import MemoryCache
    from clara.joint.train import build_joint_model
    from clara.model.memory_cache import cache_root
    from clara.world.splits import load_split

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap, "joint.init_adapters=RUN")
    ap.add_argument("--model", default=None, help="joint adapters to measure (default: the starting point, "
                    "query = copy of joint.init_adapters' compressor)")
    ap.add_argument("--split", default=None, help="questions (default: joint.train_split)")
    ap.add_argument("--n", type=int, default=64, help="questions measured")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top", type=int, default=8, help="candidates by score whose single-document loss is compared")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    cfg = load_run_config(args)
    model = build_joint_model(cfg)
    if args.model:
        model.load_adapters(args.model)
    split = args.split or cfg.joint.train_split
    records = load_split(cfg, split, train=split == cfg.joint.train_split)[: args.n]
    cache = MemoryCache.for_model(model, cache_root(cfg))
    cache.fill(model, (d for r in records for d in r.candidates))
    stats = measure(model, cache, records, cfg.joint, args.batch_size, args.top)
    stats.update(model=args.model or cfg.joint.init_adapters, split=split)
    print(json.dumps(stats, indent=2))
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
