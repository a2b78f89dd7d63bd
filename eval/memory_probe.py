"""Is a fact in the memory at all? A linear probe for the digits of a document's year, from its memory.

    python -m clara.eval.memory_probe --model RUN/adapters [--backbone DIR] --docs 1200 --out probe.json

SCP's generator answers years from memory at the closed-book level (birth year EM 0.03 on world 9).
Either the compressor does not put the digits into the memory, or the generator does not read them
out. This probe tells the two apart. Fresh world documents (``--seed``, none trained on) that state
a year (a person's birth year, a town's or an organisation's founding year) are compressed. Each of
the year's four digits is then predicted from the memory, as the generator receives it (centred and
rescaled, m·H features), by a multinomial logistic regression. The documents are split 60/20/20:
the L2 weight is picked on the second part, and the third is scored.

- High probe accuracy with low generator EM: the digits are there and the readout misses them.
- Probe accuracy at the majority baseline: the compressor drops them.

The same probe on the mean of the compressor's own text states (the document before compression,
H features) shows how much a plain average keeps; ``--layers`` probes the compressor's states at the
memory positions after earlier decoder layers, what memory read from those layers (or from their keys
and values, issue 28's lever b) could carry. The positive control, ``token_*``: the compressor's own
states at the year's last digit in the text, after each of those layers and after the final norm (a
probe that fails there is too weak to say anything). Mechanics are tested on the tiny backbone;
figures need SmolLM2 (docs/RESULTS.md §2).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)

YEAR_RELATIONS = ("birth_year", "founding_year")
DIGITS = 4
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def year_documents(n: int, seed: int, world_ranges: int = 0) -> tuple[list[str], list[str]]:
    """(texts, years) of the first ``n`` fresh world documents that state a four-digit year fact."""
    rows = year_questions(n, seed, world_ranges)
    return [r[0] for r in rows], [r[2] for r in rows]


def year_questions(n: int, seed: int, world_ranges: int = 0) -> list[tuple[str, str, str]]:
    """(text, question, year) of the first ``n`` fresh world documents that state a four-digit year fact:
    its simple question as the world teacher asks it (as `fact_position` and SCP's rows do)."""
    from clara.pretrain.synth import fresh_world_documents
    from clara.pretrain.teachers import WorldTeacher

    teacher = WorldTeacher()
    rows = []
    for doc in fresh_world_documents(1 << 40, seed, world_ranges):
        facts = teacher.facts(doc)
        year = next((f.value for f in facts if f.relation in YEAR_RELATIONS), None)
        if year is None or not re.fullmatch(r"\d{4}", year):
            continue
        question = next((p.question for p in teacher.simple_qa(doc, facts) if p.answer == year), None)
        if question is not None:
            rows.append((doc.as_text(), question, year))
            if len(rows) == n:
                break
    return rows


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float, steps: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression (x (N, F) standardised, y (N,)) by L-BFGS with an L2 penalty."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_digits(features: torch.Tensor, years: Sequence[str], weight_decays: Sequence[float] = WEIGHT_DECAYS) -> dict[str, Any]:
    """Per digit position: test accuracy of the probe (weight decay picked on validation) and of the
    majority digit of the training part; and the share of test years with all four digits right."""
    n = len(years)
    a, b = int(0.6 * n), int(0.8 * n)
    x = features.reshape(n, -1).float()
    mean, std = x[:a].mean(0), x[:a].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    digits = torch.tensor([[int(c) for c in year] for year in years])  # (N, 4)
    out: dict[str, Any] = {"train": a, "validation": b - a, "test": n - b, "positions": []}
    all_right = torch.ones(n - b, dtype=torch.bool)
    for pos in range(DIGITS):
        y = digits[:, pos]
        best = None
        for wd in weight_decays:
            lin = fit_probe(x[:a], y[:a], 10, wd)
            with torch.no_grad():
                val = (lin(x[a:b]).argmax(1) == y[a:b]).float().mean().item()
            if best is None or val > best[0]:
                best = (val, wd, lin)
        val, wd, lin = best
        with torch.no_grad():
            hit = lin(x[b:]).argmax(1) == y[b:]
        majority = int(torch.bincount(y[:a], minlength=10).argmax())
        all_right &= hit
        out["positions"].append({"position": pos, "probe": hit.float().mean().item(), "validation": val, "weight_decay": wd,
                                 "majority": (y[b:] == majority).float().mean().item()})  # fmt: skip
    out["year_all_digits"] = all_right.float().mean().item()
    return out


def token_at(model, text: str, char: int) -> tuple[int, int]:
    """(index of the token of ``text`` that holds character ``char``, tokens the compressor reads of ``text``),
    tokenised as the compressor reads it."""
    (j,), count = model.char_tokens(text, [char])
    if j is None:
        raise ValueError(f"no token holds character {char} of {text[:40]!r}")
    if j >= model.chunk_len:
        raise ValueError(f"character {char} is in token {j}, past the compressor's {model.chunk_len}")
    return j, min(count, model.chunk_len)


@contextlib.contextmanager
def caught_states(model, layers: Sequence[int] = ()):
    """Yield a dict that each forward of ``model.lm`` fills, while the block is open: ``L`` for each of ``layers``,
    the states after decoder layer L (1 = the first), and ``"last"``, after the final norm (B, T, H). It keeps
    a batch's first forward; clear it before the next batch. With ``memory_select_detach=base`` the compressor's
    forward is followed by the bare backbone's, whose states must not stand in for the compressor's."""
    decoder = model.lm.get_decoder()
    blocks = decoder.layers
    bad = [n for n in layers if not 1 <= n <= len(blocks)]
    if bad:
        raise ValueError(f"--layers {bad}: this backbone has decoder layers 1..{len(blocks)}")
    caught: dict = {}
    catch = lambda key: lambda mod, args, out: caught.setdefault(key, out[0] if isinstance(out, tuple) else out)  # noqa: E731
    hooks = [blocks[n - 1].register_forward_hook(catch(n)) for n in layers] + [decoder.norm.register_forward_hook(catch("last"))]
    try:
        yield caught
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def memory_features(model, texts: Sequence[str], batch_size: int = 16, layers: Sequence[int] = (),
                    chars: Sequence[int] | None = None, adapter: str | None = "compressor") -> dict[str, torch.Tensor]:
    """Float32 features per document: ``memory``, as the generator receives it (N, m, H; under kv readout the
    last-layer states, see ``layer_L`` for what the keys and values are made of); ``text_mean``, the
    mean of the compressor's last-layer text states (N, H); ``layer_L`` for each of ``layers``, the
    compressor's states at the memory positions after decoder layer L (1 = the first), (N, m, H). With
    ``chars`` (a character of each text): ``segment_last``, the mean of the final-norm text states over the
    chunk_len/m tokens of that character's segment (pooling without training; N, H); ``token_L`` and
    ``token_last``, the compressor's states at that
    character's token after layer L and after the final norm (N, H): the positive control, the fact as the
    text states hold it before compression. ``adapter=None``: all of these from the bare backbone instead
    (the states of each batch's first forward: ``caught_states``)."""
    from tqdm.auto import tqdm

    if model.memory_layout.value != "end":
        raise ValueError(f"memory_probe reads the memory tokens as the last m columns; this model's memory_layout is "
                         f"{model.memory_layout.value}")
    model.eval()
    m, feats = model.num_mem, {}
    with caught_states(model, layers) as caught:
        for i in tqdm(range(0, len(texts), batch_size), desc="compress", unit="batch"):
            batch = list(texts[i : i + batch_size])
            caught.clear()
            mem, text_mean = model.compress(batch, adapter=adapter, return_text_mean=True)
            # kv readout: the states part (the keys and values at layer L+1 are projections of layer_L's states)
            read = model.memory_states(mem) if model.kv_shape else model.prepare_memory(mem[:, None], update_stats=False)
            feats.setdefault("memory", []).append(read.float())
            feats.setdefault("text_mean", []).append(text_mean.float())
            for n in layers:
                feats.setdefault(f"layer_{n}", []).append(caught[n][:, -m:].float())
            if chars is not None:
                width = caught["last"].shape[1]  # rows are left-padded: text tokens, then the m memory tokens
                seg = model.chunk_len // m  # text tokens a memory vector stands for
                cols, pooled = [], []
                for b, (t, c) in enumerate(zip(batch, chars[i : i + batch_size])):
                    j, n_tok = token_at(model, t, c)
                    start = width - (n_tok + m)
                    cols.append(start + j)
                    first = start + j // seg * seg  # the digit's segment of seg text tokens, averaged
                    pooled.append(caught["last"][b, first : min(first + seg, start + n_tok)].float().mean(0))
                rows = torch.arange(len(batch))
                for key in [*layers, "last"]:
                    feats.setdefault(f"token_{key}", []).append(caught[key][rows, torch.tensor(cols)].float())
                feats.setdefault("segment_last", []).append(torch.stack(pooled))
    return {k: torch.cat(v) for k, v in feats.items()}


def main(argv: list[str] | None = None) -> int:
    from clara.cli.args import int_list, set_threads
    from clara.eval.fact_position import add_probe_arguments
    from clara.model.loading import load_trained_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_arguments(ap, 1200, "fresh world documents that state a year", 16)
    ap.add_argument("--layers", type=int_list, default=[],
                    help="also probe the compressor's states at the memory positions after these decoder layers, "
                         "e.g. 5,10,20 (1 = the first)")
    ap.add_argument("--states", choices=("compressor", "base"), default="compressor",
                    help="whose states to probe: the compressor's (default) or the bare backbone's (adapters off)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.docs < 20:
        ap.error("--docs must be at least 20 (a 60/20/20 split)")
    model = load_trained_model(args.model, args.backbone)
    texts, years = year_documents(args.docs, args.seed, args.world_ranges)
    # the year's last digit (its own token on SmolLM2): where the text states hold the hardest digit
    chars = [t.index(y) + len(y) - 1 for t, y in zip(texts, years)]
    adapter = "compressor" if args.states == "compressor" else None
    feats = memory_features(model, texts, args.batch_size, args.layers, chars, adapter=adapter)
    stats = {"model": args.model, "docs": len(texts), "seed": args.seed, "world_ranges": args.world_ranges,
             "states": args.states,
             **{name: probe_digits(x, years) for name, x in feats.items()}}  # fmt: skip
    print("| features | digit 1 | digit 2 | digit 3 | digit 4 | all four |\n|---|---|---|---|---|---|")
    for name in feats:
        row = stats[name]
        cells = " | ".join(f"{p['probe']:.3f} (majority {p['majority']:.3f})" for p in row["positions"])
        print(f"| {name} | {cells} | {row['year_all_digits']:.3f} |")
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
