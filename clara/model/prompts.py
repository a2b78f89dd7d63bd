"""How the generator is asked, and how its reply is read: one home for training, evaluation and serving.

Over memory (DESIGN §4, §5) a question is asked in one of two forms (:class:`~clara.config.GeneratorPrompt`):
"direct", as it is, or "scp", the way SCP's QA rows read memory: the QA instruction with the reply
forced to start ``Question: q\nAnswer:``. Over text (the raw-text and closed-book baselines, the
reading LoRA) a question is a chat in one of :data:`PROMPT_STYLES`. A reply is read by
:func:`extract_answer`.
"""

from __future__ import annotations

import logging
import re
from typing import Sequence

from clara.config import GeneratorPrompt

log = logging.getLogger(__name__)

QA_INSTRUCTION = "Write questions and answers about the background, one fact each."
ANSWER_INSTRUCTION = "Answer with only the answer, no sentence."
# SmolLM2 often reads "no sentence" as a yes/no cue and replies "No, no." — a wording without it:
TERSE_INSTRUCTION = "Give just the answer, in as few words as possible."
SYSTEM_PROMPT = "You answer questions with a short answer: a name, place, number or date. Never write a sentence."
# One demonstration turn about invented facts that belong to no world, so it cannot leak answers.
FEWSHOT_DOCUMENT = "Tarvel Osk is a painter. She was born in Mirrow in 1871 and works for the Brell Institute."
FEWSHOT_QUESTION = "In which city was Tarvel Osk born?"
FEWSHOT_ANSWER = "Mirrow"
# The default, "fewshot", was chosen on the world's dev split (24 single-hop questions, seed 0):
# open-book EM plain 0.08, terse 0.00, system 0.12, fewshot 0.25. Its cost: closed book, the
# model sometimes repeats the demonstration's answer.
PROMPT_STYLES = ("plain", "terse", "system", "fewshot")


def ask(questions: Sequence[str], prompt: str = "direct") -> tuple[list[str], list[str] | None]:
    """(generator inputs, reply prefixes) that ask ``questions`` in the form ``prompt`` names
    (:class:`~clara.config.GeneratorPrompt`): "direct" as they are; "scp" the way SCP's QA rows read
    memory, the instruction with each reply forced to start ``Question: q\nAnswer:``."""
    if GeneratorPrompt(prompt) is GeneratorPrompt.SCP:
        return [QA_INSTRUCTION] * len(questions), [f"Question: {q}\nAnswer:" for q in questions]
    return list(questions), None


def generate_asked(model, questions: Sequence[str], mem_blocks, prompt: str = "direct", **kw) -> list[str]:
    """The generator's replies to ``questions`` asked in the form ``prompt`` names (:func:`ask`); an scp reply
    ends with its line. ``kw`` as in ``ClaraModel.generate`` (``max_new_tokens``, ...)."""
    inputs, prefixes = ask(questions, prompt)
    return model.generate(inputs, mem_blocks, reply_prefixes=prefixes, stop=("\n",) if prefixes else (), **kw)


def resolve_prompt(given: str | None, model) -> str:
    """The ``--prompt`` an evaluation uses: the one given, else the adapters' recorded one, else direct.

    A given form that differs from the recorded one is used, with a warning: answers asked in a form
    the generator was not trained on score lower for that reason alone."""
    recorded = getattr(model, "generator_prompt", None)
    if given is None:
        prompt = recorded or GeneratorPrompt.DIRECT.value
        log.info("asking the generator in the %s form (%s)", prompt,
                 "recorded with the adapters" if recorded else "none recorded with the adapters")
        return prompt
    if recorded and given != recorded:
        log.warning("--prompt %s, but the generator was trained to be asked in the %s form", given, recorded)
    return given


def documents_per_row(questions: Sequence[str], k: int, documents: Sequence[str] | None) -> list:
    """One document text (or None) per generator prompt row; documents go where memory would, so never with
    k memory slots."""
    if documents is None:
        return [None] * len(questions)
    if k or len(documents) != len(questions):
        raise ValueError("documents need one text per question and no mem_blocks")
    return list(documents)


def user_message(question: str, document: str | None, instruction: str = ANSWER_INSTRUCTION) -> str:
    if document is None:
        return f"Question: {question}\n{instruction}"
    return f"Document:\n{document}\n\nQuestion: {question}\n{instruction}"


def build_messages(question: str, document: str | None, style: str = "plain") -> list[dict[str, str]]:
    """Chat messages for one question; ``document=None`` is closed book."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose from {PROMPT_STYLES}")
    instruction = TERSE_INSTRUCTION if style == "terse" else ANSWER_INSTRUCTION
    messages = []
    if style in ("system", "fewshot"):
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    if style == "fewshot":
        demo_doc = FEWSHOT_DOCUMENT if document is not None else None
        messages.append({"role": "user", "content": user_message(FEWSHOT_QUESTION, demo_doc, instruction)})
        messages.append({"role": "assistant", "content": FEWSHOT_ANSWER})
    messages.append({"role": "user", "content": user_message(question, document, instruction)})
    return messages


_ANSWER_PREFIX = re.compile(r"^\s*(the\s+)?answer\s*(is)?\s*[:\-]?\s*", re.IGNORECASE)


def extract_answer(reply: str) -> str:
    """The short answer inside a reply: its first non-empty line, minus 'Answer:' and a final period."""
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    first = _ANSWER_PREFIX.sub("", first)
    return first.rstrip(".").strip()
