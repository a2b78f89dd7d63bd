"""The modes configuration fields take, as enums (``clara.config`` holds the dataclasses that use them).

A value is given as its string in YAML and overrides (``model.memory_norm=center``); an unknown one is a
ConfigError naming the key and the choices (:func:`clara.config.from_dict`).
"""

from __future__ import annotations

import enum


class Precision(str, enum.Enum):
    """auto: bf16 where the device runs it natively, else fp32 (:func:`clara.devices.resolve_precision`)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


class Backend(str, enum.Enum):
    """How training is distributed: one process, torchrun DDP, or DeepSpeed ZeRO."""

    SINGLE = "single"
    DDP = "ddp"
    DEEPSPEED = "deepspeed"


class BackboneKind(str, enum.Enum):
    HF = "hf"  # a Hugging Face model directory
    GGUF = "gguf"  # a GGUF file, dequantised by transformers' gguf_file= loader
    TINY = "tiny"  # the random-init test backbone (mechanics only, never quality)


class MemoryNorm(str, enum.Enum):
    """How compressed memory is normalised where it is spliced into the generator (before the RMS rescale)."""

    NONE = "none"  # as compressed
    CENTER = "center"  # minus a running mean per memory position (removes the direction all documents share)
    STANDARDIZE = "standardize"  # centred and divided by a running per-dimension std, per memory position


class MemoryReadout(str, enum.Enum):
    """How the generator reads a document's memory (:mod:`clara.model.kv_memory`)."""

    STATES = "states"  # the last-layer states at the memory positions, spliced in as input embeddings
    KV = "kv"  # every layer's keys and values at the memory positions, a cached prefix before the prompt


class MemoryLayout(str, enum.Enum):
    """Where the compressor's memory tokens sit among a document's tokens (:func:`clara.model.memory.encoder_row`)."""

    END = "end"  # all m after the text
    INTERLEAVED = "interleaved"  # one after each m-th of the text, so each reads its own segment closest


class SelectDetach(str, enum.Enum):
    """Which of a memory selector's reads of the text states carry no gradient (:mod:`clara.model.select`)."""

    NONE = "none"  # keys and selected values both train the text states
    KEYS = "keys"  # the keys read detached states: the span term cannot reshape them
    ALL = "all"  # keys and values: nothing the selector does reaches the text states
    # the keys train the text states (so they can be shaped to be found); the values are the bare backbone's
    # states at those tokens, from one more forward without gradient (so what is selected is never reshaped)
    BASE = "base"
    # the keys train the text states; the values are the same states detached (the generator's loss cannot
    # reshape what is selected, and no second forward is needed)
    VALUES = "values"

    @classmethod
    def _missing_(cls, value):
        # adapters saved before the values could be detached record a bool (true: the keys)
        return {True: cls.KEYS, False: cls.NONE}.get(value) if isinstance(value, bool) else None


class LRSchedule(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class Scoring(str, enum.Enum):
    """How a query and a candidate memory are compared (DESIGN §5)."""

    FLATTENED = "flattened"  # cosine over the flattened m·H vectors
    POOLED = "pooled"  # cosine over the mean-pooled H vectors

    @classmethod
    def _missing_(cls, value):
        # banks (manifest "retrieval", `clara index build --retrieval`) spell flattened "flat"
        return cls.FLATTENED if value == "flat" else None


class GeneratorPrompt(str, enum.Enum):
    """How the generator is asked a question over memory (stage 2 and the answer evaluations)."""

    DIRECT = "direct"  # the question is the user turn; the reply is the answer
    SCP = "scp"  # stage 1's QA instruction; the reply starts "Question: q\nAnswer:" (no loss) and continues with the answer


class QaLayout(str, enum.Enum):
    """How SCP turns a QA record's pairs into generator targets (see ScpConfig.qa_layout)."""

    LINES = "lines"  # one target: every pair as Question/Answer lines, in the teacher's order (DESIGN §4)
    SHUFFLED = "shuffled"  # one target, the pairs in a stable random order per record
    ROWS = "rows"  # one target per pair, all from one compression of the document


class Aggregation(str, enum.Enum):
    """RL token aggregation (DESIGN §8; see clara.rl.grpo)."""

    GRPO = "grpo"  # mean over each sequence's tokens, then over sequences
    DAPO = "dapo"  # sum over all tokens / number of tokens
    DR_GRPO = "dr_grpo"  # sum over all tokens / (sequences × constant max length)


class AnswerMetric(str, enum.Enum):
    EM = "em"
    F1 = "f1"
