"""Would the generator read a year from memory that held it? An oracle slot (issue 28).

    python -m clara.eval.oracle_slot --model RUN/adapters [--backbone DIR] --docs 220 --test-docs 60 --steps 150

The year probe (`clara.eval.memory_probe`) finds a year's last digit in the compressor's state at that
digit in the text (0.98 after the final norm) and not in the memory. This asks the other half: given a
memory slot that *does* hold the state, does the generator learn to answer the year from it?

Fresh world documents that state a year (``--seed``, none trained on) are compressed once. Each arm puts
the memory in a form and then trains the generator LoRA alone (the compressor and the memory are fixed),
on the year questions of the first ``--docs - --test-docs`` documents, reply forced to ``Question: q\\nAnswer:``
and only the answer and its end as targets. Then each year question is answered greedily, on training
and on held-out documents, from its own memory and from the next document's (the wrong-memory control).

- ``control``: the memory as compressed.
- ``oracle``: slot 0 replaced by the compressor's final-norm state at the year's last digit.
- ``oracle-std``: the same state standardised per dimension over the training documents (their own mean
  and std), the other slots normalised as the model splices them, so the part that differs between
  documents is not lost under the shared direction before the RMS rescale.
- ``select``: slot 0 learned instead of given: a :class:`~clara.model.select.MemorySelector` slot (attention
  pooling over the compressor's standardised final-norm text states) trained with the generator, told
  nothing of where the year is. Its attention mass on the year's last digit is reported.

The oracle arms' vector can be the bare backbone's state at the digit instead (``--oracle-states base``, what
``model.memory_select_detach=base`` pools), put in another memory position (``--oracle-slot``), and
standardised over all the training documents' text tokens instead of their year digits (``--oracle-stats text``).

Mechanics are tested on the tiny backbone; figures need SmolLM2 (docs/RESULTS.md §2).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any, Sequence

import torch

ARMS = ("control", "oracle", "oracle-std", "select")


def arm_memory(model, mem: torch.Tensor, token: torch.Tensor | None, arm: str, n_train: int, slot: int = 0,
               stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Memory (N, m, H) as compressed -> the arm's memory, with the oracle ``token`` (N, H; None for ``control``)
    in position ``slot``. ``oracle-std``
    returns it already normalised (standardised by ``stats``, (mean, std) (H,) each; by default the training
    documents' own ``token``s) and switches the model's splice-side normalisation off (the RMS rescale still
    applies)."""
    from clara.model.memory import normalize_memory

    if arm not in ARMS or arm == "select":
        raise ValueError(f"arm must be one of {', '.join(a for a in ARMS if a != 'select')}, got {arm!r}")
    if not 0 <= slot < mem.shape[1]:
        raise ValueError(f"oracle slot {slot} is not one of the memory's {mem.shape[1]} positions")
    mem = mem.clone()
    if arm == "oracle":
        mem[:, slot] = token.to(mem.dtype)
    elif arm == "oracle-std":
        mem = normalize_memory(mem, model.mem_stats, model.memory_norm, standardize_first=model.memory_select)
        token = token.to(mem.dtype)
        mean, std = stats if stats is not None else (token[:n_train].mean(0), token[:n_train].std(0))
        mem[:, slot] = (token - mean.to(mem.dtype)) / (std.to(mem.dtype) + 1e-4)
        model._set_memory_norm("none")
    return mem


def train_generator(model, mem, questions: Sequence[str], years: Sequence[str], n_train: int,
                    steps: int, batch_size: int, lr: float, seed: int = 0, extra: Sequence[dict] = ()) -> list[float]:
    """The generator LoRA alone (and the ``extra`` AdamW parameter groups), ``steps`` steps of AdamW over
    shuffled epochs of the first ``n_train`` documents' year questions; ``mem`` is the memory (N, m, H) or a
    function of a list of document indices that gives theirs. Returns the loss per step."""
    from tqdm.auto import tqdm

    from clara.model.prompts import QA_INSTRUCTION

    model.train()
    model.set_trainable(["generator"], mem_embed=False)
    opt = torch.optim.AdamW([{"params": model.trainable_parameters()}, *extra], lr=lr)
    memory = mem if callable(mem) else mem.__getitem__
    rng, order, losses = random.Random(seed), [], []
    for _ in tqdm(range(steps), desc="generator", unit="step"):
        while len(order) < batch_size:
            order += rng.sample(range(n_train), n_train)
        idx, order = order[:batch_size], order[batch_size:]
        loss = model.generator_loss([QA_INSTRUCTION] * len(idx), memory(idx)[:, None], [years[i] for i in idx],
                                    reply_prefixes=[f"Question: {questions[i]}\nAnswer:" for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def year_em(model, mem: torch.Tensor, questions: Sequence[str], years: Sequence[str], ids: Sequence[int],
            batch_size: int) -> dict[str, float]:
    """EM of the year questions of documents ``ids``, from their own memory and from the next one's."""
    from clara.answers import exact_match
    from clara.eval.compression import answer_from_memory
    from clara.model.prompts import extract_answer

    out = {}
    for way, pick in (("right", list(ids)), ("wrong", [ids[(k + 1) % len(ids)] for k in range(len(ids))])):
        preds = answer_from_memory(model, [questions[i] for i in ids], mem[pick], batch_size=batch_size, desc=way)
        out[way] = sum(exact_match(extract_answer(p), [years[i]]) for p, i in zip(preds, ids)) / len(ids)
    return out


@torch.no_grad()
def text_states(model, texts: Sequence[str], chars: Sequence[int], batch_size: int, adapter: str | None = "compressor"):
    """The final-norm text states of the compressor (``adapter=None``: of the bare backbone), right-aligned:
    states (N, chunk_len, H) float32, mask (N, chunk_len), and the column of each text's character ``chars[i]``
    (N,), from each batch's first forward (``memory_probe.caught_states``)."""
    from clara.eval.memory_probe import caught_states, token_at

    m, T = model.num_mem, model.chunk_len
    states, mask, cols = torch.zeros(len(texts), T, model.hidden_size), torch.zeros(len(texts), T, dtype=torch.bool), []
    with caught_states(model) as caught:
        for i in range(0, len(texts), batch_size):
            caught.clear()
            model.compress(list(texts[i : i + batch_size]), adapter=adapter)
            width = caught["last"].shape[1]
            for b, k in enumerate(range(i, min(i + batch_size, len(texts)))):
                j, n_tok = token_at(model, texts[k], chars[k])
                states[k, T - n_tok :] = caught["last"][b, width - m - n_tok : width - m].float()
                mask[k, T - n_tok :] = True
                cols.append(T - n_tok + j)
    return states, mask, torch.tensor(cols)


def run_arm(args, arm: str, rows: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    from clara.eval.compression import compress_all
    from clara.model.kv_memory import require_states_readout
    from clara.model.loading import load_trained_model
    from clara.model.memory import normalize_memory
    from clara.model.select import GAIN, MemorySelector

    texts, questions, years = (list(x) for x in zip(*rows))
    n_train = len(rows) - args.test_docs
    model = load_trained_model(args.model, args.backbone, precision=args.precision)  # fresh adapters per arm
    require_states_readout(model, "the oracle slot")
    chars = [t.index(y) + len(y) - 1 for t, y in zip(texts, years)]
    extra, out = [], {}
    if arm == "select":
        states, mask, digit = text_states(model, texts, chars, args.batch_size)
        with torch.no_grad():
            base = normalize_memory(compress_all(model, texts, args.batch_size), model.mem_stats, model.memory_norm)
        model._set_memory_norm("none")
        selector = MemorySelector(model.hidden_size, 1, seed=args.seed).eval()  # eval: statistics stay fixed
        selector.update_stats(states[:n_train], mask[:n_train])
        # parameters stored over GAIN: this lr makes --select-lr the step of the parameters as used
        extra = [{"params": [selector.keys, selector.queries], "lr": args.select_lr / GAIN, "weight_decay": 0.0}]

        def mem(idx):
            slots = selector.standardize(selector(states[idx], mask[idx])[0])  # over the text tokens' statistics
            return torch.cat([slots, base[idx, slots.shape[1] :]], dim=1)  # (b, m, H)
    else:
        token = stats = None  # the control arm uses neither: no pass over the text states for it
        if arm != "control":
            adapter = "compressor" if args.oracle_states == "compressor" else None
            states, mask, digit = text_states(model, texts, chars, args.batch_size, adapter)
            token = states[torch.arange(len(rows)), digit]  # (N, H): the state at the year's last digit
            if args.oracle_stats == "text":  # every text token of the training documents, not only the year digits
                seen = states[:n_train][mask[:n_train]]
                stats = (seen.mean(0), seen.std(0))
        with torch.no_grad():
            mem = arm_memory(model, compress_all(model, texts, args.batch_size), token, arm, n_train,
                             args.oracle_slot, stats)  # (N, m, H)
    start = time.time()
    losses = train_generator(model, mem, questions, years, n_train, args.steps, args.train_batch, args.lr, extra=extra)
    out["train_seconds"] = time.time() - start
    if arm == "select":
        with torch.no_grad():
            attn = selector(states, mask)[1][:, 0]  # (N, T)
            mem = mem(list(range(len(rows))))
        at_digit = attn[torch.arange(len(rows)), digit]
        held = slice(n_train, len(rows))
        out["select"] = {"mass_on_digit_train": at_digit[:n_train].mean().item(),
                         "mass_on_digit_test": at_digit[held].mean().item(),
                         "argmax_is_digit_test": (attn[held].argmax(-1) == digit[held]).float().mean().item(),
                         "max_mass_test": attn[held].max(-1).values.mean().item()}  # fmt: skip
    tenth = max(1, len(losses) // 10)
    return {"loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth, **out,
            "train": year_em(model, mem, questions, years, range(min(n_train, args.test_docs)), args.batch_size),
            "test": year_em(model, mem, questions, years, range(n_train, len(rows)), args.batch_size)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from clara.cli.args import set_threads
    from clara.eval.fact_position import add_probe_arguments
    from clara.eval.memory_probe import year_questions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_arguments(ap, 220, "fresh world documents that state a year (training and held-out)", 16)
    ap.set_defaults(seed=778)
    ap.add_argument("--test-docs", type=int, default=60, help="the last documents, held out of training")
    ap.add_argument("--steps", type=int, default=150, help="generator training steps per arm")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--select-lr", type=float, default=3e-3, help="learning rate of the select arm's selector")
    ap.add_argument("--arms", default="control,oracle", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--oracle-states", choices=("compressor", "base"), default="compressor",
                    help="the oracle arms' state at the digit: the compressor's (default) or the bare backbone's")
    ap.add_argument("--oracle-slot", type=int, default=0, help="the memory position the oracle arms replace")
    ap.add_argument("--oracle-stats", choices=("year", "text"), default="year",
                    help="oracle-std standardises over the training documents' year digits (default) or all their "
                         "text tokens")
    ap.add_argument("--precision", default="fp32", help="fp32 (default), bf16 or auto")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    bad = sorted(set(arms) - set(ARMS))
    if bad or not arms:
        ap.error(f"--arms: {', '.join(bad) or 'none given'}; choose from {', '.join(ARMS)}")
    if not 2 <= args.test_docs <= args.docs - 2:
        ap.error("--test-docs must leave at least 2 documents on each side")
    rows = year_questions(args.docs, args.seed, args.world_ranges)
    stats: dict[str, Any] = {"model": args.model, "docs": len(rows), "test_docs": args.test_docs, "seed": args.seed,
                             "world_ranges": args.world_ranges,
                             "steps": args.steps, "lr": args.lr, "oracle_states": args.oracle_states,
                             "oracle_slot": args.oracle_slot, "oracle_stats": args.oracle_stats, "arms": {}}  # fmt: skip
    for arm in arms:
        stats["arms"][arm] = run_arm(args, arm, rows)
    print("| arm | loss first / last tenth | train EM right / wrong | held-out EM right / wrong |\n|---|---|---|---|")
    for arm, r in stats["arms"].items():
        print(f"| {arm} | {r['loss_first']:.3f} / {r['loss_last']:.3f} | {r['train']['right']:.3f} / "
              f"{r['train']['wrong']:.3f} | {r['test']['right']:.3f} / {r['test']['wrong']:.3f} |")
        if "select" in r:
            print(f"  {arm}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["select"].items()))
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
