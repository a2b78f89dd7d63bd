"""`clara eval agent`: the search agent of DESIGN §8 answering held-out questions, greedy.

For each question one greedy rollout: the generator writes ``<think>``, ``<search>query</search>``
(the query goes through the query reasoner, the top-k of the question's candidates are spliced
in as memory) and ``<answer>``, up to T turns — exactly the RL rollout, with argmax instead of
sampling. Reported beside it on the same questions and candidates: **one-shot retrieval** (the
question itself through the query reasoner, its top-k memory read once by the generator, as
`clara eval retrieval --answers`) and closed book. Behaviour metrics as in RL training: searches
per question, the share with ≥ 2 searches, thinking rate, query rewriting, source referencing,
gold recall of the written queries.

    res = evaluate_agent(model, records, cache, AgentSettings(top_k=2, max_turns=4))
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from clara.cli.args import add_out_file_arguments, add_threads_argument, claim_out_file, set_threads


@dataclass(frozen=True)
class AgentSettings:
    top_k: int = 2  # memory blocks per search
    max_turns: int = 4
    max_turn_tokens: int = 48
    scoring: str = "flattened"
    one_shot_k: int = 5  # memory blocks the one-shot baseline reads
    batch_size: int = 8
    max_new_tokens: int = 32  # one-shot and closed-book answers
    prompt: str = "direct"  # how one-shot retrieval asks the generator (joint.prompt of the stage-2 run)


class GreedyPolicy:
    """The policy's most likely token at every step (evaluation rollouts)."""

    def pick(self, logprobs, rows, turn, step):
        return logprobs.argmax(-1).cpu()


def agent_rollouts(model, records: Sequence, cache, settings: AgentSettings) -> list:
    """One greedy rollout per record, batched; trajectories in record order."""
    from tqdm.auto import tqdm

    from clara.rl.rollout import CandidateRetriever, RolloutParams, rollout

    params = RolloutParams(settings.max_turns, settings.max_turn_tokens, temperature=1.0)
    trajs = []
    for start in tqdm(range(0, len(records), settings.batch_size), desc="agent", unit="batch"):
        batch = records[start : start + settings.batch_size]
        retriever = CandidateRetriever(cache.candidates(batch), k=settings.top_k, scoring=settings.scoring)
        out = rollout(model, [r.question for r in batch], 1, retriever, GreedyPolicy(), params)
        for t in out:
            t.group += start  # index into ``records``
        trajs += out
    return trajs


def agent_scores(trajs: Sequence, records: Sequence) -> dict[str, Any]:
    """EM/F1/Cover-EM of the final answers (and the answers as ``predictions``, as ``answer_eval`` gives them)
    plus the behaviour metrics of RL training."""
    from clara.answers import answer_scores
    from clara.rl.rewards import behaviour_metrics, bridge_hit, written_recall

    preds = [t.answer or "" for t in trajs]
    scores = {**answer_scores(preds, [list(r.answers) for r in records]), "predictions": preds}
    scores.update(behaviour_metrics(trajs, lambda g, c: records[g].candidates[c].as_text()))
    scores["two_plus_searches"] = sum(len(t.queries) >= 2 for t in trajs) / max(1, len(trajs))
    recall = written_recall(trajs, records)
    if recall is not None:
        scores["recall_written"] = recall
    two_gold = [t for t in trajs if len(records[t.group].pos_index) >= 2]
    if two_gold:  # questions with a bridge document: did any search reach it
        scores["bridge_hit"] = sum(bridge_hit(t, records[t.group].pos_index) for t in two_gold) / len(two_gold)
    return scores


def evaluate_agent(model, records: Sequence, cache, settings: AgentSettings = AgentSettings(),
                   baselines: bool = True) -> dict[str, Any]:  # fmt: skip
    """The agent, one-shot retrieval and closed book on the same questions -> results dict."""
    from clara.eval.baselines import closed_book_answers
    from clara.answers import answer_scores
    from clara.eval.retrieval import answer_eval
    from clara.model.scoring import rank_with_query_model

    trajs = agent_rollouts(model, records, cache, settings)
    rows: dict[str, Any] = {"agent": agent_scores(trajs, records)}
    if baselines:
        ranking = rank_with_query_model(model, records, cache, settings.scoring)
        rows["one_shot"] = answer_eval(model, records, cache, ranking, k=settings.one_shot_k, settings=("normal",),
                                       batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                                       prompt=settings.prompt)["normal"]  # fmt: skip
        closed = closed_book_answers(model, records, settings.batch_size, settings.max_new_tokens)
        rows["closed_book"] = {**answer_scores(closed, [list(r.answers) for r in records]), "predictions": closed}
    preds = {name: row.pop("predictions") for name, row in rows.items()}  # for the table per relation
    examples = [{"question": t.question, "answers": list(records[t.group].answers), "text": t.text,
                 "queries": t.queries, "answer": t.answer, "relation": records[t.group].extra.get("relation")}
                for t in trajs]  # fmt: skip
    return {"n": len(records), "settings": asdict(settings), "systems": rows,
            "by_relation": em_by_relation(preds, records), "rollouts": examples}


def em_by_relation(preds: dict[str, Sequence[str]], records: Sequence) -> dict[str, dict[str, float]]:
    """EM of each system per question relation (world questions carry ``relation``, e.g.
    ``birth_city>country``): which readings succeed — a relation with few distinct answers (a world's
    countries) can be right by the answers the generator learned in training, not by reading memory."""
    from clara.answers import exact_match

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(str(r.extra.get("relation") or r.type or "–"), []).append(i)
    return {rel: {"n": len(idx), **{name: sum(exact_match(p[i], records[i].answers) for i in idx) / len(idx)
                                    for name, p in preds.items()}}
            for rel, idx in sorted(groups.items())}  # fmt: skip


def format_agent_table(results: dict[str, Any]) -> str:
    lines = ["| system | n | EM | F1 | Cover-EM | searches/q | ≥2 searches | thinking | query rewriting | source ref. | "
             "bridge hit |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in results["systems"].items():
        extra = [s.get(k) for k in ("search_count", "two_plus_searches", "thinking_rate", "query_rewriting",
                                    "source_referencing", "bridge_hit")]  # fmt: skip
        cells = " | ".join("–" if v is None else f"{v:.3f}" for v in extra)
        lines.append(f"| {name} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} | {cells} |")
    by_relation = results.get("by_relation") or {}
    if len(by_relation) > 1:
        systems = list(results["systems"])
        lines += ["", f"| relation | n | {' | '.join(f'{s} EM' for s in systems)} |", "|---" * (2 + len(systems)) + "|"]
        for rel, row in by_relation.items():
            lines.append(f"| {rel} | {row['n']} | " + " | ".join(f"{row[s]:.3f}" for s in systems) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI


def register_agent(sub) -> None:
    from clara.cli.args import add_prompt_argument, csv_list

    p = sub.add_parser(
        "agent",
        help="the search agent (greedy rollouts) vs one-shot retrieval and closed book, with behaviour metrics",
        description="One greedy rollout per question, as in `clara rl` (search -> query reasoner -> top-k "
        "memory spliced in, up to --max-turns turns), scored by EM/F1/Cover-EM with searches per question, "
        "thinking rate, query rewriting and source referencing; beside it one-shot retrieval (the question "
        "as the query, top --one-shot-k memory read once) and closed book on the same candidates. The default "
        "questions are the hidden two-hop ones, where one retrieval cannot find the bridge document.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="adapters directory (`clara rl` or `clara joint` out_dir/adapters)")
    p.add_argument("--world", required=True, help="world directory (from `clara world --out DIR`)")
    p.add_argument("--backbone", default=None, help="backbone path, if not the one recorded with the adapters")
    p.add_argument("--split", default="test", type=csv_list, help="world split(s), comma-separated")
    p.add_argument("--types", default="two_hop_hidden", type=csv_list, help="question types, comma-separated (empty = all)")
    p.add_argument("--limit", type=int, default=0, help="at most this many questions (0 = all)")
    p.add_argument("--top-k", type=int, default=2, help="memory blocks per search (rl.top_k)")
    p.add_argument("--max-turns", type=int, default=4, help="turns per rollout (rl.max_turns)")
    p.add_argument("--max-turn-tokens", type=int, default=48, help="tokens per turn (rl.max_turn_tokens)")
    p.add_argument("--one-shot-k", type=int, default=5, help="memory blocks the one-shot baseline reads")
    add_prompt_argument(p, "one-shot retrieval")
    p.add_argument("--no-baselines", action="store_true", help="score the agent only")
    p.add_argument("--cache-dir", default="out/memory-cache", help="candidate-memory cache (shared with `clara joint`)")
    add_threads_argument(p)
    add_out_file_arguments(p, "write scores and every rollout to this JSON file")
    p.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    claim_out_file(args)
    from clara.model.prompts import resolve_prompt
    from clara.eval.retrieval import load_eval_records
    from clara.fileio import atomic_write_json
    from clara.model.memory_cache import MemoryCache
    from clara.model.loading import load_trained_model

    set_threads(args.threads)
    split, types = args.split, args.types
    records = load_eval_records(world=args.world, splits=split, types=types, limit=args.limit or None)  # errors if none
    model = load_trained_model(args.model, args.backbone)
    cache = MemoryCache.for_model(model, args.cache_dir)
    cache.fill(model, (d for r in records for d in r.candidates))
    settings = AgentSettings(top_k=args.top_k, max_turns=args.max_turns, max_turn_tokens=args.max_turn_tokens,
                             one_shot_k=args.one_shot_k, prompt=resolve_prompt(args.prompt, model))  # fmt: skip
    results = evaluate_agent(model, records, cache, settings, baselines=not args.no_baselines)
    print(f"agent eval: {len(records)} questions ({','.join(types) or 'all types'}) from {args.world} {','.join(split)}")
    print(format_agent_table(results))
    if args.out:
        atomic_write_json(args.out, {**results, "model": args.model, "world": args.world})
        print(f"results written to {args.out}")
    return 0
