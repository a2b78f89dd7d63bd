"""Configuration: frozen dataclasses, YAML presets, dotted command-line overrides.

    cfg = load_config("configs/tiny-cpu.yaml", ["train.lr=3e-4", "model.lora.r=8"])

An unknown key, a value of the wrong type, or an invalid value raises :class:`ConfigError`
naming the dotted key. Modes are enums. ``config_hash(cfg)`` is a stable digest of the
resolved config; it is written with every run and checkpoint.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clara.errors import ConfigError
from clara.modes import (  # the modes config fields take; callers import them from here or there
    Precision,
    Backend,
    BackboneKind,
    MemoryNorm,
    MemoryReadout,
    MemoryLayout,
    LRSchedule,
    Scoring,
    GeneratorPrompt,
    QaLayout,
    Aggregation,
    AnswerMetric,
    SelectDetach,
)
from clara.yaml_safe import load_yaml, yaml_text


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self):
        _check(self.r >= 1, "model.lora.r", f"must be >= 1, got {self.r}")
        _check(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "out/backbones/tiny"  # directory (hf, tiny) or .gguf file
    kind: BackboneKind = BackboneKind.TINY
    chunk_len: int = 256  # document tokens per compressed chunk
    compression_rate: int = 16  # m = chunk_len // compression_rate memory vectors
    lora: LoraConfig = field(default_factory=LoraConfig)
    rescale_memory: bool = True  # spliced memory vectors set to the token embeddings' mean RMS (DESIGN §11)
    memory_norm: MemoryNorm = MemoryNorm.NONE  # splice-side normalisation of memory (clara.model.memory.normalize_memory)
    memory_readout: MemoryReadout = MemoryReadout.STATES  # what the generator reads of the memory (kv: issue 28's lever b)
    memory_layout: MemoryLayout = MemoryLayout.END  # where the memory tokens sit in the compressor's input
    # issue 28 lever (f): the first memory_select memory vectors are attention poolings over the compressor's
    # text states (clara.model.select), spliced standardised; the rest are the memory tokens' states as before
    memory_select: int = 0
    # which of the selector's reads of the text states are detached (none, keys, all, base). keys: its span term
    # cannot reshape them; measured no better, the digit's state loses the year as much (docs/RESULTS.md §2).
    # all: the selected values too, so nothing the selector does reaches the text states; measured no better (the
    # selector no longer finds the year). base: the keys train the states, the slots pool the bare backbone's
    # states (one more forward without gradient; DESIGN §3)
    memory_select_detach: SelectDetach = SelectDetach.NONE

    def __post_init__(self):
        _check(self.compression_rate >= 1, "model.compression_rate", "must be >= 1")
        _check(self.memory_readout == MemoryReadout.STATES or self.memory_norm == MemoryNorm.NONE, "model.memory_norm",
               "normalises spliced states; with model.memory_readout=kv nothing is spliced, so it must be none")
        _check(0 <= self.memory_select <= self.chunk_len // max(1, self.compression_rate), "model.memory_select",
               f"must be in [0, {self.chunk_len // max(1, self.compression_rate)}] (the memory vectors), got {self.memory_select}")
        _check(not self.memory_select or (self.memory_readout == MemoryReadout.STATES and self.memory_norm != MemoryNorm.NONE),
               "model.memory_select", "needs model.memory_readout=states and a model.memory_norm (center or standardize): "
               "selected slots are standardised with the memory statistics")
        _check(
            self.chunk_len % self.compression_rate == 0,
            "model.chunk_len",
            f"{self.chunk_len} is not a multiple of model.compression_rate={self.compression_rate}",
        )

    @property
    def num_mem_tokens(self) -> int:
        return self.chunk_len // self.compression_rate


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: LRSchedule = LRSchedule.CONSTANT
    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    precision: Precision = Precision.AUTO  # bf16 autocast only where native (clara.devices)
    seed: int = 0
    log_every: int = 10
    save_every: int = 50  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # consecutive NaN/inf steps before aborting
    backend: Backend = Backend.SINGLE
    deepspeed_config: str = "configs/ds_zero2.json"
    tensorboard: bool = False

    def __post_init__(self):
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 disables clipping)")
        _check(self.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")


@dataclass(frozen=True)
class DataConfig:
    train_file: str = ""
    eval_file: str = ""
    skip_bad_records: bool = False


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    entities: int = 300
    candidates: int = 20
    max_words: int = 180  # longest world document in words (real ones are ~45 words, ~75 SmolLM2 tokens)

    def __post_init__(self):
        _check(self.entities >= 10, "world.entities", "must be >= 10")
        _check(self.candidates >= 2, "world.candidates", "must be >= 2")
        _check(self.max_words >= 60, "world.max_words", "must be >= 60")


@dataclass(frozen=True)
class JointConfig:
    """Stage 2 (``clara joint``): query reasoner + generator from the generator's loss alone."""

    temperature: float = 0.02  # tau of the straight-through top-k relaxation
    top_k: int = 5  # memories selected per question
    candidates: int = 20  # N candidates per question (records must have at least this many)
    scoring: Scoring = Scoring.FLATTENED
    unfreeze_compressor: bool = False  # recompute candidate memory with gradient every step
    cache_dir: str = ""  # candidate-memory cache; "" = <out_dir>/../memory-cache
    init_adapters: str = ""  # SCP adapters dir (or run dir holding adapters/); "" = current compressor
    world: str = ""  # world directory (questions/<split>.jsonl); used when data.train_file is empty
    # more `clara world` directories whose train_split questions join the training set (evaluation stays on
    # joint.world); measured on an unseen world (docs/RESULTS.md §4): lower single-hop, higher description R@1
    train_worlds: tuple[str, ...] = ()
    train_split: str = "train"
    eval_split: str = "dev"
    eval_every: int = 0  # steps between Recall@k evaluations on the dev subset; 0 = off
    eval_limit: int = 64  # dev questions in each evaluation
    max_answer_len: int = 32  # answer tokens in the loss
    # the form in which the generator reads the question: "scp" asks it the way stage 1 trained it to read memory
    prompt: GeneratorPrompt = GeneratorPrompt.DIRECT
    # steps at the start in which the query reasoner is held fixed (the generator alone learns, reading the memory
    # the starting query retrieves); measured in docs/RESULTS.md §4
    query_warmup_steps: int = 0

    def __post_init__(self):
        _check(self.temperature > 0, "joint.temperature", f"must be > 0, got {self.temperature}")
        _check(self.top_k >= 1, "joint.top_k", "must be >= 1")
        _check(self.candidates >= self.top_k, "joint.candidates", f"must be >= joint.top_k={self.top_k}")
        _check(self.eval_every >= 0, "joint.eval_every", "must be >= 0")
        _check(self.query_warmup_steps >= 0, "joint.query_warmup_steps", "must be >= 0")


@dataclass(frozen=True)
class ScpConfig:
    """Stage 1 (SCP, DESIGN §4): L = CE(generator(instruction, mem) -> target) + mse_weight * MSE."""

    mse_weight: float = 0.1  # λ on MSE(mean_i mem_i, mean_t h_t)
    # which targets train: "qa" and "paraphrase" records; "reconstruction" (issue 28 lever (a)): each distinct
    # document spelled back word for word from its memory (set max_target_tokens above the documents' length)
    data_types: tuple[str, ...] = ("qa", "paraphrase")
    max_target_tokens: int = 192  # target tokens per example (longer targets are cut)
    fresh_seed: int = 1  # --world-fresh: seed of the fresh-document stream (not the eval world's)
    # --world-fresh: the value ranges of a world of this many entities (300: a default world's, birth years
    # 1935-1999 with mentors, 16 occupations, 10 industries); 0: each 40-entity batch's own, as the stream
    # always had (birth years 1990-1999, no mentor, 4 occupations, 3 industries; issue 28, docs/RESULTS.md §2)
    fresh_world_ranges: int = 0
    instruct_k: int = 1  # `clara pretrain instruct`: gold + first non-gold candidates; gold slot by id hash
    init_adapters: str = ""  # adapters to start from (train an SCP run further, fresh optimizer); "" = fresh LoRA
    init_other_cr: bool = False  # init_adapters may be of another CR: LoRA kept, memory-token embeddings resampled
    init_other_backbone: bool = False  # init_adapters may come from another backbone of the same shape (a warning)
    # beyond the reference: in-batch InfoNCE between each document's pooled memory and its own text states
    # (both centred over the batch), a signal that keeps documents' memories apart (DESIGN §11, collapse)
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    # How a QA record becomes targets. "lines": every pair as one target, in the teacher's fixed fact order
    # (DESIGN §4); max_target_tokens cuts it (at 64 tokens 2.8 of a world document's 6.4 pairs fit, so the later
    # facts never train). "shuffled": the same target with the pairs in a stable random order per record, so
    # every fact comes first in some documents. "rows": one generator row per pair, all reading one compression
    # of the document, each in the form `clara eval compression` asks; every fact trains, none is cut.
    # Measurements of each: docs/RESULTS.md §2.
    qa_layout: QaLayout = QaLayout.LINES
    # layout "rows": how many of a document's pairs one compression trains; 0 = all. Each row repeats the
    # prompt (~55 tokens on SmolLM2), so all pairs cost ~4x a lines step. A file's record of P pairs becomes
    # ceil(P / n) examples, so every pair trains once an epoch; fresh documents are read once and train one
    # stable draw of n (so a few rows per document still train every kind of fact across documents)
    rows_per_document: int = 0
    # beyond the reference: self-distillation from the open-book view. Each generator row is also run (no
    # gradient) with its document as text where the memory goes (distill_teacher: the "generator" adapter or
    # the "base" backbone); its hidden states at distill_layers (0 = embeddings, L = the last layer), at the
    # positions that predict the target, are targets for the memory-reading row: distill_weight * mean over
    # layers of ||s - t||^2 / ||t||^2. Measured no better (docs/RESULTS.md §2).
    distill_weight: float = 0.0
    distill_layers: tuple[int, ...] = (10, 20, 30)
    distill_teacher: str = "generator"
    # issue 28 lever (e): layout "rows" only. True: a QA row's reply is given up to "Answer:" (the form
    # `clara eval compression` asks in) and only the answer and its end are targets, so the loss is all on
    # what must be spelled exactly; False: the question is a target too (~3/4 of a row's target tokens)
    answer_only: bool = False
    # with model.memory_select: weight of the selector's span term, -log of the attention its slots together put
    # on the last token of each trained answer found in the document (0: the selector learns from the CE alone,
    # measured not to find the year in 150 steps, docs/RESULTS.md §2)
    select_weight: float = 1.0
    # true: each answer's last token is to be held by one slot (-log of the largest one slot puts on it) rather
    # than by the slots together, which lets every slot hold a mixture (session 23: four slots together 0.95 on
    # the year's last digit, none more than 0.54)
    select_one_slot: bool = False
    # the control of issue 28's capacity test: the generator LoRA trains on the same rows with each document
    # as text where its memory would go (a plain text LoRA; the compressor, MSE and memory go unused)
    read_text: bool = False
    # which of stage 1's adapters train. [compressor]: the generator stays as loaded, so no fact can be learned
    # into its weights and the loss falls only through what the memory carries (issue 28's capacity test on
    # years alone, docs/RESULTS.md §2)
    train_adapters: tuple[str, ...] = ("compressor", "generator")

    def __post_init__(self):
        _check(self.mse_weight >= 0, "scp.mse_weight", f"must be >= 0, got {self.mse_weight}")
        _check(bool(self.train_adapters) and set(self.train_adapters) <= {"compressor", "generator"},
               "scp.train_adapters", f"must be a non-empty subset of compressor,generator; got {list(self.train_adapters)}")
        _check(not self.read_text or "generator" in self.train_adapters, "scp.train_adapters",
               "must include generator with scp.read_text (the text control trains the generator alone)")
        _check(self.distill_weight >= 0, "scp.distill_weight", f"must be >= 0, got {self.distill_weight}")
        _check(bool(self.distill_layers) and all(i >= 0 for i in self.distill_layers), "scp.distill_layers",
               f"must be a non-empty list of hidden-state indices >= 0, got {list(self.distill_layers)}")
        _check(self.distill_teacher in ("generator", "base"), "scp.distill_teacher",
               f"must be generator or base, got {self.distill_teacher!r}")
        bad = sorted(set(self.data_types) - {"qa", "paraphrase", "reconstruction"})
        _check(not bad and bool(self.data_types), "scp.data_types",
               f"must be a non-empty subset of qa,paraphrase,reconstruction; got {list(self.data_types)}")
        _check(self.max_target_tokens >= 1, "scp.max_target_tokens", "must be >= 1")
        _check(self.instruct_k >= 1, "scp.instruct_k", "must be >= 1")
        # 40: clara.world.generate.FRESH_BATCH_ENTITIES (the world imports this module, so not from there)
        _check(self.fresh_world_ranges == 0 or self.fresh_world_ranges >= 40, "scp.fresh_world_ranges",
               f"must be 0 (each batch's own ranges) or at least the stream's 40 entities a batch, got {self.fresh_world_ranges}")
        _check(self.rows_per_document >= 0, "scp.rows_per_document", f"must be >= 0, got {self.rows_per_document}")
        _check(not self.rows_per_document or QaLayout(self.qa_layout) is QaLayout.ROWS, "scp.rows_per_document",
               f"applies to scp.qa_layout rows only, not {QaLayout(self.qa_layout).value}")
        _check(not self.answer_only or QaLayout(self.qa_layout) is QaLayout.ROWS, "scp.answer_only",
               f"applies to scp.qa_layout rows only, not {QaLayout(self.qa_layout).value}")
        _check(not self.read_text or not (self.distill_weight or self.contrastive_weight), "scp.read_text",
               "reads no memory, so it takes neither scp.distill_weight nor scp.contrastive_weight")
        _check(self.select_weight >= 0, "scp.select_weight", f"must be >= 0, got {self.select_weight}")
        _check(self.contrastive_weight >= 0, "scp.contrastive_weight", f"must be >= 0, got {self.contrastive_weight}")
        _check(self.contrastive_temperature > 0, "scp.contrastive_temperature", f"must be > 0, got {self.contrastive_temperature}")


@dataclass(frozen=True)
class RLConfig:
    """Agentic RL (``clara rl``, DESIGN §8). Data, candidates, cache and scoring come from ``joint``."""

    init_adapters: str = ""  # stage-2 adapters (or run dir holding adapters/); "" = fresh (mechanics only)
    question_types: tuple[str, ...] = ()  # train only on these world question types; () = all
    group_size: int = 4  # G rollouts per question
    max_turns: int = 4  # T turns per rollout
    top_k: int = 2  # k memory blocks per search
    max_turn_tokens: int = 48  # tokens the policy may write per turn
    temperature: float = 1.0  # sampling temperature (log-probs use the same one)
    clip_eps: float = 0.2
    beta: float = 0.01  # k3 KL to the reference (the starting generator)
    aggregation: Aggregation = Aggregation.GRPO
    max_len: int = 0  # dr_grpo's constant length; 0 = max_turns × max_turn_tokens
    dgpo_beta: float = 0.0  # β_t of KL(π ‖ π_teacher) on failed rollouts; 0 = DGPO off
    dgpo_threshold: float = 0.5  # a rollout with reward below this is "failed"
    teacher_adapters: str = ""  # adapters dir whose generator is the teacher ("" = the starting generator)
    reward_answer: float = 1.0
    reward_format: float = 0.1
    reward_self_certainty: float = 0.0
    reward_retrieval_hit: float = 0.0
    reward_bridge_hit: float = 0.0  # a search retrieved the bridge (last gold of a two-hop question)
    answer_metric: AnswerMetric = AnswerMetric.EM
    distractor_start: float = 0.0  # p_s of the distractor curriculum
    distractor_end: float = 0.0  # p_e
    distractor_base: float = 2.0  # b (1 = linear)
    curriculum_steps: int = 0  # T of the curriculum; 0 = train.max_steps
    cold_start: bool = False  # distil teacher trajectories instead of GRPO (DGPO cold start, joint/coldstart.py)

    def __post_init__(self):
        _check(self.group_size >= 2, "rl.group_size", f"must be >= 2 (advantages compare rollouts), got {self.group_size}")
        _check(self.max_turns >= 1, "rl.max_turns", "must be >= 1")
        _check(self.top_k >= 1, "rl.top_k", "must be >= 1")
        _check(self.max_turn_tokens >= 1, "rl.max_turn_tokens", "must be >= 1")
        _check(self.temperature > 0, "rl.temperature", f"must be > 0 (RL samples), got {self.temperature}")
        _check(0 < self.clip_eps < 1, "rl.clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        _check(self.beta >= 0 and self.dgpo_beta >= 0, "rl.beta", "beta and dgpo_beta must be >= 0")
        for key in ("distractor_start", "distractor_end"):
            v = getattr(self, key)
            _check(0.0 <= v <= 1.0, f"rl.{key}", f"must be a probability in [0, 1], got {v}")
        _check(self.distractor_base > 0, "rl.distractor_base", "must be > 0")


@dataclass(frozen=True)
class ClaraConfig:
    out_dir: str = "out/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    scp: ScpConfig = field(default_factory=ScpConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    rl: RLConfig = field(default_factory=RLConfig)


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {problem}")


# ---------------------------------------------------------------- dict <-> dataclass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        try:
            return tp(value)  # a member, its value, or what the enum's _missing_ accepts (an older spelling)
        except ValueError:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {allowed}") from None
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known under '{prefix or '<top>'}': {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config section '{prefix or '<top>'}': {e}") from None


def to_dict(cfg: Any) -> dict:
    """Plain-YAML view of a config (enums as their values, tuples as lists)."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def config_hash(cfg: Any) -> str:
    """Stable 16-hex digest of the resolved config."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml_text(raw, f"override '{text}'") if raw.strip() else ""
    except ConfigError:
        value = raw  # not YAML: the string as given (an alias, too, is left as text, never expanded)
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type = ClaraConfig) -> Any:
    """YAML preset (optional) + dotted overrides -> frozen, validated config."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(cls, data)


def save_resolved(cfg: Any, directory: str | Path) -> str:
    """Write ``config.yaml`` (resolved) and return its hash."""
    from clara.fileio import atomic_write_text

    h = config_hash(cfg)
    text = f"# config hash: {h}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write_text(Path(directory) / "config.yaml", text)
    return h
