"""The joint loss (DESIGN §5): query scores -> straight-through top-k -> generator next-token loss.

    objective = JointObjective(model, cache, cfg.joint)
    loss, metrics = objective(records)          # records: JointRecord with N candidates each

The only training signal is the generator's loss on the answer. It reaches the query
adapter through the soft half of ``Z = hard + soft - stopgrad(soft)``: the selected memory
is ``einsum(Z, mem)``, whose forward value is exactly the hard top-k pick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from clara.config import JointConfig
from clara.kernels.straight_through import straight_through_topk
from clara.model.scoring import model_scores
from clara.model.prompts import ask

if TYPE_CHECKING:
    from clara.model.memory_cache import MemoryCache
    from clara.model.clara_model import ClaraModel


def asked_generator_loss(model, questions, mem_blocks, answers, prompt, **kw) -> torch.Tensor:
    """The generator's loss on ``answers`` with the questions asked in the form ``prompt`` names
    (``joint.prompt``, see :func:`clara.pretrain.scp.ask`); ``kw`` as in ``ClaraModel.generator_loss``."""
    inputs, prefixes = ask(questions, prompt)
    return model.generator_loss(inputs, mem_blocks, answers, reply_prefixes=prefixes, **kw)


def select_memory(
    scores: torch.Tensor, cand_mem: torch.Tensor, k: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Straight-through top-k of candidate memory.

    scores (B, N), cand_mem (B, N, m, H) -> (selected (B, k, m, H), Z (B, k, N), indices (B, k)).
    """
    z, indices = straight_through_topk(scores, k, temperature)  # (B, k, N), (B, k)
    selected = torch.einsum("bkn,bnmh->bkmh", z.to(cand_mem.dtype), cand_mem)  # (B, k, m, H)
    return selected, z, indices


class JointObjective(nn.Module):
    """Wraps the model so the Trainer (and DDP) call one forward: records -> (loss, metrics).

    Candidate memory comes from ``cache`` (frozen compressor) or, with
    ``cfg.unfreeze_compressor``, is recompressed with gradient in every forward.
    """

    def __init__(self, model: ClaraModel, cache: MemoryCache | None, cfg: JointConfig):
        super().__init__()
        self.model = model
        self.cache = cache
        self.cfg = cfg
        if cache is None and not cfg.unfreeze_compressor:
            raise ValueError("a memory cache is needed unless joint.unfreeze_compressor is on")

    def candidate_memory(self, records: Sequence) -> torch.Tensor:
        """(B, N, m, H) memory of every candidate of every record."""
        if self.cfg.unfreeze_compressor or self.cache is None:
            n = len(records[0].candidates)
            texts = [d.as_text() for r in records for d in r.candidates]
            mem = self.model.compress(texts)  # (B·N, m, H), with gradient
            return mem.view(len(records), n, *mem.shape[1:])
        return self.cache.candidates(records, self.model.device)

    def forward(self, records: Sequence, query_grad: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """``query_grad=False`` (``joint.query_warmup_steps``): the query's gradient is exactly zero. The query
        stays in the graph (times 0) so DDP sees every parameter used; Adam with all-zero gradients leaves
        it unchanged (with ``train.weight_decay`` 0, the default)."""
        cfg = self.cfg
        questions = [r.question for r in records]
        answers = [r.answers[0] for r in records]
        cand_mem = self.candidate_memory(records)  # (B, N, m, H)
        query = self.model.encode_query(questions)  # (B, m, H)
        if not query_grad:
            query = query.detach() + 0.0 * query
        scores = model_scores(self.model, query, cand_mem, cfg.scoring)  # (B, N)
        selected, _, indices = select_memory(scores, cand_mem, cfg.top_k, cfg.temperature)
        loss = asked_generator_loss(self.model, questions, selected, answers, cfg.prompt, max_answer_len=cfg.max_answer_len)
        hit = [
            float(bool(set(r.pos_index) & set(idx))) for r, idx in zip(records, indices.tolist()) if r.pos_index
        ]
        metrics = {"hit_at_k": sum(hit) / len(hit)} if hit else {}
        metrics["score_spread"] = float(scores.detach().std(dim=1).mean())  # near 0: memory collapsed (§11)
        return loss, metrics
