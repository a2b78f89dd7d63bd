"""Persistence of a ClaraModel's trained state: adapter directories and the compressor's identity.

A mixin of :class:`clara.model.clara_model.ClaraModel` (it reads the model's adapters, tokenizer, memory
embeddings and backbone identity). An adapter directory holds one PEFT directory per saved
adapter, the tokenizer, the memory-token embeddings (plus the splice-side memory stats when on),
``clara_model.json`` and a checksum manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from clara.model.adapters import ADAPTERS
from clara.config import LoraConfig, SelectDetach, to_dict
from clara.errors import CheckpointError

log = logging.getLogger("clara.model.clara_model")  # the model's own logger: these are ClaraModel methods

MODEL_INFO = "clara_model.json"
MEM_EMBED_FILE = "memory_tokens.safetensors"


def resample_slots(embed: torch.Tensor, m: int) -> torch.Tensor:
    """Memory-token embeddings (m0, H) -> (m, H), linearly interpolated along the slot axis.

    The first and last slots are kept; with m = 2·m0 - 1 every saved slot is kept and the new ones sit
    halfway between neighbours. A starting point for training at another compression rate, no more.
    """
    if m == embed.shape[0]:
        return embed
    if m == 1:
        return embed.mean(0, keepdim=True)
    x = embed.detach().float().T.unsqueeze(0)  # (1, H, m0); one saved slot is repeated
    out = torch.nn.functional.interpolate(x, size=m, mode="linear", align_corners=True)  # (1, H, m)
    return out[0].T.to(embed.dtype).contiguous()


class AdapterStorage:
    """save_adapters / load_adapters / compressor_hash of :class:`clara.model.clara_model.ClaraModel`."""

    def compressor_hash(self) -> str:
        """Identity of everything compressed memory depends on (16 hex): backbone, sizes, the
        compressor LoRA weights and the memory-token embeddings. Memory caches and banks are
        keyed by it, and a bank written by another compressor is refused."""
        h = hashlib.sha256()
        sizes = [self.backbone_hash, self.chunk_len, self.num_mem, self.hidden_size]
        if self.kv_shape is not None:  # kv readout: memory holds keys and values too (older hashes unchanged)
            sizes.append(self.memory_readout.value)
        if self.memory_layout.value != "end":  # memory tokens placed elsewhere: other memory (older hashes unchanged)
            sizes.append(self.memory_layout.value)
        h.update(json.dumps(sizes).encode())
        tensors = [("mem_embed", self.mem_embed)] + sorted(self.adapters.state_dict("compressor").items())
        if self.mem_stats is not None:  # the retrieval space depends on them (retrieval_memory)
            tensors.append((f"mem_stats/{self.memory_norm}", self.mem_stats))
        tensors += sorted(self._selector_tensors().items())  # none without memory_select (older hashes unchanged)
        for name, t in tensors:
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save_adapters(self, directory: str | Path, names: Sequence[str] | None = None,
                      prompt: str | None = None) -> Path:
        """Write the PEFT adapter directories (``names``, default all three), tokenizer, memory embeddings
        and metadata. A stage saves the adapters it trains; one left out keeps its init when loaded
        (a missing query reasoner becomes a copy of the compressor, see :meth:`load_adapters`).

        ``prompt``: the form the stage trained the generator to be asked in (``GeneratorPrompt``), recorded as
        ``generator_prompt``; None keeps the one the loaded adapters recorded (RL keeps stage 2's)."""
        from safetensors.torch import save_file

        from clara.fileio import atomic_dir, atomic_write_json, write_manifest

        directory = Path(directory)
        if prompt is not None:
            self.generator_prompt = str(getattr(prompt, "value", prompt))
        with atomic_dir(directory) as tmp:
            self.adapters.save(tmp, names)
            self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            tensors = {"mem_embed": self.mem_embed.detach().cpu().contiguous()}
            if self.mem_stats is not None:
                tensors["mem_stats"] = self.mem_stats.detach().cpu().contiguous()
            tensors.update({k: t.detach().cpu().contiguous() for k, t in self._selector_tensors().items()})
            save_file(tensors, str(tmp / MEM_EMBED_FILE))
            atomic_write_json(tmp / MODEL_INFO, {**self._info(), "adapters": list(names or self.adapters.names)})
            write_manifest(tmp, {"kind": "clara_adapters"})
        log.info("adapters saved to %s", directory)
        return directory

    def _selector_tensors(self) -> dict:
        """The selector's tensors by their saved names (``select/keys`` …); empty without one."""
        if self.selector is None:
            return {}
        return {f"select/{name}": t for name, t in self.selector.named_parameters()}

    def _info(self) -> dict:
        cfg = self.adapters.peft.peft_config[ADAPTERS[0]]
        return {
            "backbone_hash": self.backbone_hash,
            "backbone": self.backbone_path,
            "backbone_kind": self.backbone_kind,
            "backbone_recipe": self.backbone_recipe,
            "adapters": list(self.adapters.names),
            "num_mem": self.num_mem,
            "chunk_len": self.chunk_len,
            "hidden_size": self.hidden_size,
            "vocab_size": len(self.tokenizer),
            "mem_ids": list(self.tokens.mem_ids),
            "slot_id": self.tokens.slot_id,
            "embed_rms": self.embed_rms,
            "rescale_memory": self.rescale_memory,
            "memory_norm": self.memory_norm,
            "memory_readout": self.memory_readout.value,
            "memory_select": self.memory_select,
            "memory_select_detach": (self.selector.detach if self.selector is not None else SelectDetach.NONE).value,
            "memory_layout": self.memory_layout.value,
            "generator_prompt": self.generator_prompt,
            "lora": to_dict(LoraConfig(r=cfg.r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                       target_modules=tuple(sorted(cfg.target_modules)))),
        }

    def load_adapters(self, directory: str | Path, other_cr: bool = False, other_backbone: bool = False,
                      backbone_key: str = "model.backbone", grow_rank: bool = False) -> None:
        """Load adapters saved by :meth:`save_adapters`; refuse ones trained on another backbone.

        Adapters without a query reasoner (stage 1's) get a copy of the compressor as one, as joint training starts.
        ``other_cr``: adapters saved with another number of memory tokens (another compression rate) are loaded
        too, to be trained further at this one: the LoRA weights as saved, the memory-token embeddings resampled
        along the slot axis (:func:`resample_slots`), the splice-side memory stats left unset.
        ``other_backbone``: adapters trained on another backbone of the same shape are loaded too, to be trained
        further on this one (e.g. from the derived reader backbone to the stock one), with a warning.
        ``backbone_key``: how the caller's user names the backbone (a config key or a flag), for the error.
        ``grow_rank``: adapters of a lower LoRA rank load into this model's higher one (``AdapterSet.load``).
        """
        from safetensors.torch import load_file

        from clara.model.backbone import same_backbone
        from clara.fileio import verify_manifest

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such adapter directory")
        verify_manifest(directory)
        info = json.loads((directory / MODEL_INFO).read_text(encoding="utf-8"))
        match = same_backbone(info, self.backbone_hash, self.backbone_recipe)
        if match == "rebuild":
            log.warning("%s: adapters were trained on backbone %s, this one is %s: another build of the same "
                        "recipe (%s; e.g. trained with another CPU thread count), loading them", directory,
                        info["backbone_hash"], self.backbone_hash, self.backbone_recipe)  # fmt: skip
        elif not match and other_backbone:
            log.warning("%s: adapters were trained on backbone %s (%s), this one is %s: loading them to train further "
                        "on this backbone", directory, info["backbone_hash"], info.get("backbone"), self.backbone_hash)
        elif not match:
            raise CheckpointError(
                f"{directory}: adapters were trained on backbone {info['backbone_hash']} ({info.get('backbone')}) "
                f"but this model's backbone is {self.backbone_hash} ({self.backbone_path}); "
                f"set {backbone_key} to the backbone the adapters were trained on"
                + (" (or, to train them further on this one, scp.init_other_backbone=true)" if backbone_key.startswith("model.") else "")
            )
        ours = self._info()
        resample = other_cr and info["num_mem"] != ours["num_mem"]
        for key in ("hidden_size",) if resample else ("num_mem", "hidden_size", "mem_ids", "slot_id"):
            if info[key] != ours[key]:
                raise CheckpointError(
                    f"{directory}/{MODEL_INFO}: {key}={info[key]} but this model has {ours[key]}; "
                    "set model.chunk_len/model.compression_rate to match the checkpoint"
                    + ("" if key == "hidden_size" else " (or scp.init_other_cr=true to train it further at this rate)")
                )
        self.adapters.load(directory, info.get("adapters"), grow_rank=grow_rank)
        saved_names = info.get("adapters") or []
        if "query" not in saved_names and "compressor" in saved_names and "query" in self.adapters.names:
            # stage 1's adapters hold no query reasoner: it starts as the compressor (DESIGN §5), so retrieval
            # with them measures that starting point, not an untrained query adapter (the bare backbone)
            self.adapters.copy_adapter("compressor", "query")
            log.info("%s: no query adapter saved; the query reasoner is a copy of the compressor", directory)
        self.generator_prompt = info.get("generator_prompt")
        for key, ours_value, old in (("memory_readout", self.memory_readout.value, "states"),
                                     ("memory_layout", self.memory_layout.value, "end")):
            saved_value = info.get(key, old)  # older directories: the only form there was
            if saved_value != ours_value:  # the LoRA weights load either way: training them further is the point
                log.warning("%s: adapters were trained with %s=%s, this model has %s", directory, key, saved_value,
                            ours_value)
        saved = load_file(str(directory / MEM_EMBED_FILE))
        # the generator was trained on memory normalised this way: adopt it (older dirs lack the key)
        norm = info.get("memory_norm", self.memory_norm)
        if norm != self.memory_norm and self.kv_shape is not None:  # kv readout splices nothing to normalise
            log.info("%s: memory_norm=%s as trained; not used with memory_readout=kv", directory, norm)
        elif norm != self.memory_norm:
            log.info("%s: memory_norm=%s (as trained), not %s", directory, norm, self.memory_norm)
            self._set_memory_norm(norm)
        if resample:
            log.info("%s: %d memory tokens saved, %d here: memory-token embeddings resampled, memory stats unset",
                     directory, info["num_mem"], self.num_mem)
            saved = {"mem_embed": resample_slots(saved["mem_embed"], self.num_mem)}
        with torch.no_grad():
            self.mem_embed.copy_(saved["mem_embed"].to(self.mem_embed.dtype))
            if self.mem_stats is not None and "mem_stats" in saved:
                self.mem_stats.copy_(saved["mem_stats"].to(self.mem_stats.dtype))
            self._load_selector(directory, saved)
        log.info("adapters loaded from %s", directory)

    def _load_selector(self, directory: Path, saved: dict) -> None:
        """The selector's tensors from ``saved``. Adapters saved without one (or with another number of slots)
        leave this model's fresh selector, and the memory stats of its positions unset: those positions held
        memory tokens' states, and their next training batch sets them."""
        from clara.model.memory import unset_memory_stats

        ours = self._selector_tensors()
        theirs = {k: v for k, v in saved.items() if k.startswith("select/")}
        if not ours:
            if theirs:
                log.warning("%s: adapters were trained with memory_select; this model selects nothing", directory)
            return
        if set(theirs) == set(ours) and all(theirs[k].shape == t.shape for k, t in ours.items()):
            for k, t in ours.items():
                t.copy_(theirs[k].to(t.dtype))
            return
        log.info("%s: no selector of %d slots saved; a fresh one, its memory positions' stats unset", directory,
                 self.memory_select)
        if self.mem_stats is not None:
            unset_memory_stats(self.mem_stats.data, slice(0, self.memory_select))
