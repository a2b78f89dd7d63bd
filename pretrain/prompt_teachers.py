"""Teachers that prompt a language model: shared prompts and robust output parsing, plus `hf`.

A :class:`PromptTeacher` turns each teacher step into chat messages and parses the reply;
subclasses only implement ``complete(messages, temperature)``. Parsing accepts what small
and large models actually write: numbered or bulleted lists, ``Q:``/``A:`` or
``Question:``/``Answer:`` pairs (on one line or two, with markdown bold), preambles
("Sure! Here are…") and trailing chatter. Coverage is judged lexically (see
:func:`clara.pretrain.teachers.lexical_covers`).
"""

from __future__ import annotations

import abc
import logging
import re
import threading

from clara.pretrain.teachers import Fact, SynthDoc, Teacher
from clara.data.records import QAPair

log = logging.getLogger(__name__)

SYSTEM = "You are a careful assistant that writes training data from documents. Use only the document."
FACTS_PROMPT = ("List every atomic fact stated in the document, one short sentence per fact, as a numbered list. "
                "Write nothing else.\n\nDocument:\n{doc}")  # fmt: skip
SIMPLE_PROMPT = ("Write one question and its short answer for each fact below, using only the document. "
                 "Each question asks about exactly one fact. Format:\nQ: ...\nA: ...\n\n"
                 "Document:\n{doc}\n\nFacts:\n{facts}")  # fmt: skip
COMPLEX_PROMPT = ("Write {n} questions whose answers need two or more of the facts below together, with short "
                  "answers, using only the document. Format:\nQ: ...\nA: ...\n\nDocument:\n{doc}\n\nFacts:\n{facts}")  # fmt: skip
PARAPHRASE_PROMPT = ("Rewrite the document in different words. Keep every fact, add nothing. Write only the "
                     "rewritten text.\n\nDocument:\n{doc}")  # fmt: skip

_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•])\s+(.*\S)\s*$")
_Q = re.compile(r"^\s*(?:\d+\s*[.)]\s*)?[*_]*\s*(?:Q|Question)\s*\d*\s*[*_]*\s*[:.)-]\s*[*_]*\s*(.*)$", re.I)
_A = re.compile(r"^\s*[*_]*\s*(?:A|Answer)\s*\d*\s*[*_]*\s*[:.)-]\s*[*_]*\s*(.*)$", re.I)
_INLINE_A = re.compile(r"\s+[*_]*(?:A|Answer)\s*[*_]*\s*:\s*[*_]*\s*", re.I)
_PREAMBLE = re.compile(r"^(?:sure|certainly|here(?:'s| is| are)|okay|of course)\b[^\n]*:\s*\n", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("*_").strip()).strip()


def parse_list(reply: str) -> list[str]:
    """Items of a numbered/bulleted list; plain non-empty lines when there is no list marker."""
    lines = [ln for ln in reply.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := _ITEM.match(ln))]
    if not items:
        items = [ln for ln in lines if not ln.rstrip().endswith(":")]
    out = []
    for item in items:
        item = _clean(item)
        if len(item.split()) >= 3 and item.lower() not in {x.lower() for x in out}:
            out.append(item)
    return out


def parse_qa_pairs(reply: str) -> list[QAPair]:
    """Question–answer pairs from ``Q:``/``A:`` style output; unpaired lines are ignored."""
    pairs: list[QAPair] = []
    question: str | None = None
    for line in reply.splitlines():
        q, a = _Q.match(line), _A.match(line)
        if q:
            text = q.group(1)
            inline = _INLINE_A.split(text, maxsplit=1)
            if len(inline) == 2 and _clean(inline[0]) and _clean(inline[1]):
                pairs.append(QAPair(_clean(inline[0]), _clean(inline[1])))
                question = None
            else:
                question = _clean(text)
        elif a and question:
            answer = _clean(a.group(1))
            if answer:
                pairs.append(QAPair(question, answer))
            question = None
        elif question and line.strip() and not question.endswith("?"):
            question = _clean(question + " " + line)  # a question wrapped onto the next line
    return [p for p in pairs if len(p.question) > 3]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.replace("\n", " ")) if len(s.split()) >= 3]


def parse_paraphrase(reply: str) -> str:
    text = _PREAMBLE.sub("", reply.strip(), count=1)
    return text.strip().strip('"').strip()


class PromptTeacher(Teacher):
    """Teacher steps as prompts; ``complete`` is the only model-specific part."""

    max_new_tokens = 384

    @abc.abstractmethod
    def complete(self, messages: list[dict], temperature: float = 0.0) -> str:
        """The assistant reply to chat ``messages``."""

    def _ask(self, prompt: str, temperature: float = 0.0) -> str:
        return self.complete([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}], temperature)

    def facts(self, doc: SynthDoc) -> list[Fact]:
        # a "fact" of more than 40 words is a summary, not an atomic fact
        items = [x for x in parse_list(self._ask(FACTS_PROMPT.format(doc=doc.as_text()))) if len(x.split()) <= 40]
        sentences = split_sentences(doc.text)
        if len(items) < min(2, len(sentences)):  # a model that cannot list facts: the sentences stand in
            log.info("teacher listed %d usable facts for %s; using its %d sentences", len(items), doc.id, len(sentences))
            items = sentences
        return [Fact(item) for item in items]

    def simple_qa(self, doc: SynthDoc, facts: list[Fact], attempt: int = 0) -> list[QAPair]:
        listing = "\n".join(f"{i + 1}. {f.text}" for i, f in enumerate(facts))
        # a retry samples, so a model that failed greedily gets another chance
        reply = self._ask(SIMPLE_PROMPT.format(doc=doc.as_text(), facts=listing), 0.0 if attempt == 0 else 0.7)
        return parse_qa_pairs(reply)

    def complex_qa(self, doc: SynthDoc, facts: list[Fact]) -> list[QAPair]:
        if len(facts) < 2:
            return []
        listing = "\n".join(f"{i + 1}. {f.text}" for i, f in enumerate(facts))
        n = min(3, len(facts) // 2)
        return parse_qa_pairs(self._ask(COMPLEX_PROMPT.format(n=n, doc=doc.as_text(), facts=listing)))

    def paraphrase(self, doc: SynthDoc) -> str:
        return parse_paraphrase(self._ask(PARAPHRASE_PROMPT.format(doc=doc.as_text())))


class HFTeacher(PromptTeacher):
    """A local transformers chat model (e.g. SmolLM2-135M-Instruct converted by `clara backbone convert`)."""

    name = "hf"
    workers = 1  # one model, one CPU: documents run one at a time

    def __init__(self, model: str, max_new_tokens: int = 384, seed: int = 0):
        from clara.model.backbone import load_backbone

        self.model, self.tokenizer = load_backbone(model, "hf")
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self._lock = threading.Lock()

    def complete(self, messages: list[dict], temperature: float = 0.0) -> str:
        import torch

        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        sampling = dict(do_sample=True, temperature=temperature, top_p=0.9) if temperature > 0 else dict(do_sample=False)
        with self._lock, torch.no_grad():
            torch.manual_seed(self.seed)
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, repetition_penalty=1.1,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)  # (1, T + new)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
