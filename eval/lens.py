"""Logit lens on memory states (DESIGN §10): what words does a memory slot "think" of?

    res = logit_lens(model, "Who founded Velkor Works?", adapter="query", layers="all", top=5)
    print(format_lens_table(res))                      # rows = layers, cols = memory slots
    plot_lens_heatmap(res, "lens.png")                 # clara.eval.plots
    stats = lens_overlap(model, records, top=20)       # query lens vs raw question vs gold doc words

Each memory slot's hidden state at a layer is projected through the model's *final norm* and
*LM head*, then softmaxed over the vocabulary. States are captured with forward hooks on the
decoder blocks while :meth:`ClaraModel.encode` runs, so the lens sees exactly the inputs the
compressor / query reasoner sees (memory = the last m columns, left padding). Hooks, not
``output_hidden_states``: Hugging Face returns the *last* entry of ``hidden_states`` already
normed and the others not, so hooks give every layer in the same (pre-norm) form.

Layer numbering: 0 is the input to the first block (the memory-token embeddings), ``i`` the
output of block ``i-1``; the last (``L`` = number of blocks, or ``-1``) is the state the
encoder returns (after the final norm). The memory and slot tokens are excluded from the
vocabulary the lens decodes to: they are never words.

Generic over decoder-only models: the head is ``get_output_embeddings()``; the final norm is
found on the decoder (``model.model.norm`` for Llama/Mistral/Qwen, ``transformer.ln_f`` for
GPT-2 style, ``final_layernorm``/``final_layer_norm`` elsewhere), through peft wrappers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from clara.errors import ClaraError, ConfigError

if TYPE_CHECKING:
    from clara.model.clara_model import ClaraModel

log = logging.getLogger(__name__)

NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")
LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer")


# ---------------------------------------------------------------------------- finding the parts


def _unwrap(lm: nn.Module) -> nn.Module:
    """The Hugging Face model under any peft wrapper (PeftModel -> LoraModel -> *ForCausalLM)."""
    for _ in range(3):
        if hasattr(lm, "get_base_model"):
            lm = lm.get_base_model()
        elif type(lm).__name__ == "LoraModel" and hasattr(lm, "model"):
            lm = lm.model
        else:
            break
    return lm


def _decoder(lm: nn.Module) -> nn.Module:
    lm = _unwrap(lm)
    if hasattr(lm, "get_decoder"):
        dec = lm.get_decoder()
        if dec is not None:
            return dec
    for name in ("model", "transformer", "gpt_neox"):
        if isinstance(getattr(lm, name, None), nn.Module):
            return getattr(lm, name)
    raise ClaraError(f"logit lens: cannot find the decoder of {type(lm).__name__}")


def final_norm(lm: nn.Module) -> nn.Module:
    """The norm applied after the last block (``model.model.norm`` for Llama-style models)."""
    dec = _decoder(lm)
    for name in NORM_NAMES:
        mod = getattr(dec, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ClaraError(f"logit lens: no final norm ({', '.join(NORM_NAMES)}) on {type(dec).__name__}")


def output_head(lm: nn.Module) -> nn.Module:
    head = _unwrap(lm).get_output_embeddings()
    if head is None:
        raise ClaraError(f"logit lens: {type(_unwrap(lm)).__name__} has no output embeddings (LM head)")
    return head


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of the decoder."""
    dec = _decoder(lm)
    for name in LAYER_LIST_NAMES:
        mod = getattr(dec, name, None)
        if isinstance(mod, nn.ModuleList) and len(mod):
            return mod
    raise ClaraError(f"logit lens: cannot find the blocks ({', '.join(LAYER_LIST_NAMES)}) of {type(dec).__name__}")


# ---------------------------------------------------------------------------- projection


def project(states: torch.Tensor, norm: nn.Module, head: nn.Module, exclude: Sequence[int] = (),
            normed: bool = False) -> torch.Tensor:  # fmt: skip
    """Hidden states (..., H) -> next-token probabilities (..., V) via final norm and LM head.

    ``exclude`` ids get probability 0 (the rest renormalised); ``normed`` skips the norm for
    states that already went through it.
    """
    x = states if normed else norm(states)  # (..., H)
    logits = head(x.to(head.weight.dtype)).float()  # (..., V)
    if len(exclude):
        logits[..., torch.as_tensor(list(exclude), device=logits.device)] = float("-inf")
    return logits.softmax(-1)  # (..., V)


def excluded_ids(model: ClaraModel) -> list[int]:
    """Memory tokens, the slot token, other special tokens (pad, eos, unk, …) and head rows beyond
    the tokenizer (padding rows): none of them is ever a word."""
    vocab_rows = output_head(model.lm).weight.shape[0]
    special = set(model.tokens.all_ids) | set(getattr(model.tokenizer, "all_special_ids", []))
    return sorted(special | set(range(len(model.tokenizer), vocab_rows)))


def parse_layers(spec: str | Sequence[int] | None, num_blocks: int) -> list[int]:
    """``"all"``, ``"last"``/None, or indices ``"0,5,-1"`` (negative from the end) -> 0..num_blocks."""
    n = num_blocks + 1  # embeddings input + one state per block
    if spec is None or spec == "last":
        return [num_blocks]
    if spec == "all":
        return list(range(n))
    items = [int(t) for t in spec.split(",") if t.strip()] if isinstance(spec, str) else list(spec)
    out = []
    for i in items:
        if not -n <= i < n:
            raise ConfigError(f"--layers: layer {i} out of range; this model has layers 0..{num_blocks} (or -1)")
        out.append(i % n)
    if not out:
        raise ConfigError("--layers: give 'all', 'last' or comma-separated layer indices")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------- capturing states


@torch.no_grad()
def memory_states(model: ClaraModel, texts: Sequence[str], adapter: str | None) -> torch.Tensor:
    """Pre-norm states of the m memory positions at every layer: (B, L+1, m, H).

    Runs ``model.encode`` (the compressor / query-reasoner forward) with hooks on the blocks.
    """
    blocks = decoder_layers(model.lm)
    m = model.num_mem
    captured: list[torch.Tensor] = []

    def grab_input(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden[:, -m:].detach())  # (B, m, H)

    def grab_output(module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        captured.append(hidden[:, -m:].detach())  # (B, m, H)

    handles = [blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [b.register_forward_hook(grab_output) for b in blocks]
    was_training = model.training
    model.eval()
    try:
        model.encode(list(texts), adapter)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if len(captured) != len(blocks) + 1:
        raise ClaraError(f"logit lens: captured {len(captured)} states for {len(blocks)} blocks")
    return torch.stack(captured, dim=1).float()  # (B, L+1, m, H)


# ---------------------------------------------------------------------------- the lens


@dataclass
class LensResult:
    """Top tokens of each memory slot at each chosen layer."""

    text: str
    adapter: str | None
    layers: list[int]  # layer numbers (0 = embeddings input, num_blocks = last)
    num_blocks: int
    top_ids: list[list[list[int]]]  # [layer][slot][rank]
    top_probs: list[list[list[float]]]  # [layer][slot][rank]
    tokens: list[list[list[str]]]  # decoded top tokens, [layer][slot][rank]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_slots(self) -> int:
        return len(self.tokens[0]) if self.tokens else 0

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "adapter": self.adapter, "layers": self.layers, "num_blocks": self.num_blocks,
                "top_ids": self.top_ids, "top_probs": self.top_probs, "tokens": self.tokens, **self.extra}  # fmt: skip


def token_text(tokenizer, token_id: int) -> str:
    """A token as readable text: decoded bytes, whitespace made visible only when it is all there is."""
    text = tokenizer.decode([token_id])
    return text.strip() or repr(text)


def lens_from_states(model: ClaraModel, states: torch.Tensor, layers: Sequence[int], top: int) -> tuple[list, list]:
    """states (L+1, m, H) of one text -> (top ids, top probs), each [layer][slot][rank]."""
    num_blocks = states.shape[0] - 1
    norm, head = final_norm(model.lm), output_head(model.lm)
    picked = states[list(layers)].to(head.weight.device)  # (l, m, H)
    with torch.no_grad():
        probs = project(picked.to(head.weight.dtype), norm, head, excluded_ids(model))  # (l, m, V)
    log.debug("lens over %d of %d layers", len(layers), num_blocks + 1)
    values, ids = probs.topk(top, dim=-1)  # (l, m, top)
    return ids.tolist(), values.tolist()


def logit_lens(model: ClaraModel, text: str, adapter: str | None, layers: str | Sequence[int] | None = None,
               top: int = 5) -> LensResult:  # fmt: skip
    """The lens of one question (``adapter="query"``) or document (``"compressor"``); None = bare backbone."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    states = memory_states(model, [text], adapter)[0]  # (L+1, m, H)
    num_blocks = states.shape[0] - 1
    chosen = parse_layers(layers, num_blocks)
    ids, probs = lens_from_states(model, states, chosen, top)
    tokens = [[[token_text(model.tokenizer, i) for i in slot] for slot in layer] for layer in ids]
    return LensResult(text=text, adapter=adapter, layers=chosen, num_blocks=num_blocks, top_ids=ids,
                      top_probs=probs, tokens=tokens)  # fmt: skip


def _prob(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")


def format_lens_table(res: LensResult, show: int | None = None) -> str:
    """Markdown table, one row per layer and one column per slot: ``tok (p) · tok (p) …``."""
    show = show or len(res.tokens[0][0])
    head = "| layer | " + " | ".join(f"slot {j}" for j in range(res.num_slots)) + " |"
    lines = [head, "|" + "---|" * (res.num_slots + 1)]
    for layer, toks, probs in zip(res.layers, res.tokens, res.top_probs):
        name = "emb" if layer == 0 else ("last" if layer == res.num_blocks else str(layer))
        cells = [" · ".join(f"{_cell(t)} ({_prob(p)})" for t, p in zip(ts[:show], ps[:show])) for ts, ps in zip(toks, probs)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- compare mode


def _token_words(tokenizer, ids) -> set[str]:
    from clara.world.lexical import content_words

    return set().union(*(content_words(tokenizer.decode([i])) for i in ids)) if len(ids) else set()


def _content_token_ids(tokenizer, text: str) -> set[int]:
    """Ids of ``text``'s tokens that decode to a content word (not a stopword, not punctuation)."""
    from clara.world.lexical import content_words

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {i for i in set(ids) if content_words(tokenizer.decode([i]))}


def _target_doc(record):
    """The document the question must reach: the bridge (last gold) of a two-hop question, else the gold."""
    if not record.pos_index:
        raise ClaraError(f"question {record.id or record.question[:40]!r} has no gold document (pos_index)")
    return record.candidates[record.pos_index[-1]]


VIEWS = ("lens", "read")
SIDES = ("query", "raw", "memory")  # the question through the query adapter, the bare backbone, the target's memory


def _union_top_ids(model, states: torch.Tensor, top: int, view: str = "lens") -> list[set[int]]:
    """states (B, m, H) at one layer -> per text, the union over slots of the top token ids.

    ``lens``: the logit lens (final norm, LM head). ``read``: memory as the generator reads it — a
    vector spliced among input embeddings — with the component shared by all B texts removed (the
    mean over the batch, per slot, as ``memory_norm=center`` removes the documents' shared mean),
    ranked by cosine against the input-embedding matrix.
    """
    excluded = excluded_ids(model)
    with torch.no_grad():
        if view == "lens":
            norm, head = final_norm(model.lm), output_head(model.lm)
            scores = project(states.to(head.weight.dtype), norm, head, excluded)  # (B, m, V)
        elif view == "read":
            emb = model.lm.get_input_embeddings().weight.float()  # (V', H)
            centred = states.float() - states.float().mean(0, keepdim=True)  # (B, m, H)
            scores = F.normalize(centred, dim=-1) @ F.normalize(emb, dim=-1).T  # (B, m, V')
            scores[..., [i for i in excluded if i < scores.shape[-1]]] = float("-inf")
        else:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    ids = scores.topk(top, dim=-1).indices  # (B, m, top)
    return [set(row.flatten().tolist()) for row in ids]


def lens_overlap(model: ClaraModel, records: Sequence, *, adapter: str = "query", layer: int = -1,
                 top: int = 20, batch_size: int = 8, view: str = "lens",
                 kinds: Mapping[str, str] | None = None, memory: bool = True) -> dict[str, Any]:  # fmt: skip
    """How many of the target document's content words (not in the question) the query lens surfaces.

    For each question: the union over memory slots of the top-``top`` tokens at ``layer`` (logit
    lens, or with ``view="read"`` the centred states against the input embeddings, see
    :func:`_union_top_ids`), as stemmed content words, intersected with the content words of the
    target document (the bridge document for two-hop, :func:`_target_doc`) minus the question's own
    words and stopwords. The same count for the bare backbone at the same positions (``raw``) is
    the baseline. ``token_overlap`` counts token ids instead of words (sub-word names count too).
    ``wrong_overlap`` is the control: the same words against another question's target document, of
    the same kind when ``kinds`` (document id -> entity type, e.g. from the world's documents) says.
    ``specific_overlap`` counts only the target's words that the control document lacks: its entity's
    own facts, and also any template word ("population") the control happens to lack, so read the
    listed ``specific`` words. ``wrong_specific_overlap`` is its control, the control document's words
    that the target lacks. ``other_kind_overlap`` is the opposite control: the words of a target document
    of another kind (a company's for a city's): a lens that names its target's kind hits the same kind's
    words as often as the target's, and another kind's less.

    ``memory`` adds a third side beside ``query`` and ``raw``: the target document's own memory (the
    compressor, same layer and view, centred over the compared documents), counted against the same words.
    It is the ceiling of the comparison: what of the target document its memory shows in this view.
    """
    from tqdm.auto import tqdm

    from clara.world.lexical import content_words

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if view == "read" and len(records) < 2:
        raise ConfigError(f"the read view centres over the compared questions: needs at least 2, got {len(records)}")
    tok = model.tokenizer
    targets = [_target_doc(r) for r in records]
    docs = [d.as_text() for d in targets]
    sides = [("query", adapter, "question"), ("raw", None, "question")]  # (name, adapter, what it reads)
    sides += [("memory", "compressor", "document")] if memory else []
    chosen: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in sides}  # per side: (b, m, H) per batch
    for start in tqdm(range(0, len(records), batch_size), desc="lens compare", unit="batch", leave=False):
        texts = {"question": [r.question for r in records[start : start + batch_size]],
                 "document": docs[start : start + batch_size]}
        for name, ad, source in sides:
            states = memory_states(model, texts[source], ad)  # (b, L+1, m, H)
            chosen[name].append(states[:, parse_layers([layer], states.shape[1] - 1)[0]])
    # all texts of a side at once: the read view centres over the whole set
    views = {name: _union_top_ids(model, torch.cat(parts), top, view) for name, parts in chosen.items()}
    doc_kinds = [kinds.get(d.id or "") for d in targets] if kinds else None
    wrong = wrong_targets(docs, doc_kinds)
    other = other_kind_targets(doc_kinds) if doc_kinds else [None] * len(docs)
    per_q: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        target = content_words(docs[i]) - content_words(r.question)
        # control: another question's target document (same question words removed), of the same kind when
        # kinds are known: words every document of a kind shares ("company", "town") then hit it as often
        wrong_target = content_words(docs[wrong[i]]) - content_words(r.question) if wrong[i] is not None else set()
        other_target = content_words(docs[other[i]]) - content_words(r.question) if other[i] is not None else set()
        target_ids = _content_token_ids(tok, docs[i]) - set(tok(r.question, add_special_tokens=False)["input_ids"])
        specific, wrong_specific = target - wrong_target, wrong_target - target
        row = {"id": r.id, "type": r.type or "untyped", "question": r.question, "target_words": len(target),
               "specific_words": len(specific), "wrong_specific_words": len(wrong_specific)}  # fmt: skip
        for name, ids in views.items():
            words = _token_words(tok, ids[i])
            hits = sorted(words & target)
            row[name] = {"overlap": len(hits), "words": hits, "token_overlap": len(ids[i] & target_ids),
                         "wrong_overlap": len(words & wrong_target), "other_kind_overlap": len(words & other_target),
                         "specific": sorted(words & specific),
                         "specific_overlap": len(words & specific),
                         "wrong_specific_overlap": len(words & wrong_specific)}  # fmt: skip
        per_q.append(row)
    return {"adapter": adapter, "layer": layer, "top": top, "view": view, "n": len(per_q),
            "wrong_document": "same kind" if kinds else "any other", "sides": list(views),
            "by_type": _mean_by_type(per_q), "margins": paired_margins(per_q), "questions": per_q}  # fmt: skip


def wrong_targets(docs: Sequence[str], kinds: Sequence[str | None] | None = None) -> list[int | None]:
    """For each question, the index of the next question (cyclically) whose target document differs; with
    ``kinds``, the next whose document is of the same kind (any other when none is)."""
    n = len(docs)

    def pick(i: int, same_kind: bool) -> int | None:
        return next((j % n for j in range(i + 1, i + n) if docs[j % n] != docs[i]
                     and (not same_kind or kinds[j % n] == kinds[i])), None)  # fmt: skip

    out = []
    for i in range(n):
        j = pick(i, True) if kinds is not None and kinds[i] is not None else None
        out.append(pick(i, False) if j is None else j)
    return out


def other_kind_targets(kinds: Sequence[str | None]) -> list[int | None]:
    """For each question, the index of the next question (cyclically) whose target document is of another
    kind; None where its kind is unknown or no other kind is among them."""
    n = len(kinds)
    return [next((j % n for j in range(i + 1, i + n) if kinds[j % n] is not None and kinds[j % n] != kinds[i]), None)
            if kinds[i] is not None else None for i in range(n)]  # fmt: skip


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Question rows by type, in type order, then all of them as ``all``."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        for g in (row["type"], "all"):
            groups.setdefault(g, []).append(row)
    return {g: groups[g] for g in sorted(groups, key=lambda g: (g == "all", g))}


def _mean_by_type(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for g, rs in _groups(rows).items():
        n = len(rs)
        out[g] = {"n": n, **{k: sum(r[k] for r in rs) / n for k in ("target_words", "specific_words", "wrong_specific_words")}}
        for name in [side for side in SIDES if side in rs[0]]:
            for k in ("overlap", "token_overlap", "wrong_overlap", "other_kind_overlap", "specific_overlap",
                      "wrong_specific_overlap"):  # fmt: skip
                out[g][f"{name}_{k}"] = sum(r[name][k] for r in rs) / n
    return out


# (label, side, count, side, count): per question, the first count minus the second. A margin over the
# same-kind document is also the specific words' margin (the words both documents hold cancel).
MARGINS = (
    ("query - raw question", "query", "overlap", "raw", "overlap"),
    ("query - same-kind document", "query", "overlap", "query", "wrong_overlap"),
    ("query - other-kind document", "query", "overlap", "query", "other_kind_overlap"),
    ("bridge memory - same-kind document", "memory", "overlap", "memory", "wrong_overlap"),
)


def paired_margins(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per question type and overall: each of :data:`MARGINS` as a mean per-question difference with its
    95% paired bootstrap interval (:func:`clara.eval.stats.bootstrap_ci`)."""
    from clara.eval.stats import bootstrap_ci

    out: dict[str, dict[str, dict[str, float]]] = {}
    for g, rs in _groups(rows).items():
        out[g] = {}
        for label, side_a, a, side_b, b in MARGINS:
            if side_a in rs[0] and side_b in rs[0]:
                mean, low, high = bootstrap_ci([r[side_a][a] - r[side_b][b] for r in rs])
                out[g][label] = {"mean": mean, "low": low, "high": high}
    return out


def format_overlap_table(stats: dict[str, Any]) -> str:
    """Markdown: per question type, the words each side hits, with the controls; then the target memory's row."""
    lines = ["| type | n | target words | query lens overlap | same, wrong document | same, other kind | "
             "raw question overlap | same, wrong document | query token overlap | raw token overlap | specific words | "
             "query specific | same, wrong document | raw specific |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g, s in stats["by_type"].items():
        lines.append(f"| {g} | {s['n']} | {s['target_words']:.1f} | {s['query_overlap']:.3f} | {s['query_wrong_overlap']:.3f} | "
                     f"{s['query_other_kind_overlap']:.3f} | {s['raw_overlap']:.3f} | {s['raw_wrong_overlap']:.3f} | "
                     f"{s['query_token_overlap']:.3f} | {s['raw_token_overlap']:.3f} | {s['specific_words']:.1f} | "
                     f"{s['query_specific_overlap']:.3f} | {s['query_wrong_specific_overlap']:.3f} | "
                     f"{s['raw_specific_overlap']:.3f} |")  # fmt: skip
    if "memory" in stats.get("sides", ()):
        lines += ["", "The target document's own memory (compressor), same layer and view — the ceiling:", "",
                  "| type | n | memory overlap | same, wrong document | same, other kind | memory specific | "
                  "same, wrong document |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for g, s in stats["by_type"].items():
            lines.append(f"| {g} | {s['n']} | {s['memory_overlap']:.3f} | {s['memory_wrong_overlap']:.3f} | "
                         f"{s['memory_other_kind_overlap']:.3f} | {s['memory_specific_overlap']:.3f} | "
                         f"{s['memory_wrong_specific_overlap']:.3f} |")  # fmt: skip
    if stats.get("margins"):
        lines += ["", "Paired margins, per question (mean and 95% bootstrap interval):", "",
                  "| type | margin | mean | 95% interval |", "|---|---|---|---|"]  # fmt: skip
        for g, margins in stats["margins"].items():
            lines += [f"| {g} | {label} | {m['mean']:+.3f} | [{m['low']:+.3f}, {m['high']:+.3f}] |"
                      for label, m in margins.items()]  # fmt: skip
    return "\n".join(lines)
