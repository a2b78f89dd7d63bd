"""Agentic RL recipe (DESIGN §8): rollouts -> rewards -> GRPO(+DGPO) loss on the shared Trainer.

    out = run_rl(load_config("configs/rl-tiny-cpu.yaml"), resume=False)

1. Build the model, load ``rl.init_adapters`` (a stage-2 run). Only the generator adapter trains;
   the query reasoner and compressor are frozen and candidate memory comes from the stage-2
   memory cache (``joint.cache_dir``, keyed by the compressor's hash).
2. The reference policy is a snapshot of the starting generator weights; the DGPO teacher is
   the generator of ``rl.teacher_adapters`` (or the starting generator). Their log-probs are
   computed by swapping those weights into the generator adapter under ``no_grad``: the same
   replay (:func:`sequence_logprobs`) on the same recorded sequences.
3. Each step: G rollouts per question (one policy update per rollout batch, so the "old"
   log-probs are the sampling-time ones and the ratio starts at 1), rewards, group advantages,
   loss. The sampling RNG and the curriculum depend only on (seed, step), and the step counter
   is checkpointed, so resume is exact.
4. With ``rl.cold_start`` the run instead distils teacher trajectories (search the question,
   search the bridge entity, answer; :mod:`clara.rl.coldstart`) — DGPO's cold start, run
   before GRPO so that the policy writes searches GRPO can reward.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from clara.config import AnswerMetric, ClaraConfig
from clara.errors import ConfigError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def swapped_weights(params: Sequence[nn.Parameter], values: Sequence[torch.Tensor] | None):
    """Temporarily load ``values`` into ``params`` (no grad); None leaves them as they are."""
    if values is None:
        yield
        return
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


class RLObjective(nn.Module):
    """records -> (loss, metrics): one GRPO step's rollouts and loss; ``step`` is checkpointed state."""

    def __init__(self, model, cache, cfg: ClaraConfig, teacher: list[torch.Tensor] | None = None):
        super().__init__()
        self.model, self.cache, self.cfg = model, cache, cfg
        self.gen_params = model.adapters.parameters("generator")
        self.reference = [p.detach().clone() for p in self.gen_params]  # the starting policy
        self.teacher = teacher if teacher is not None else self.reference
        self.step = 0

    def _retriever(self, records, distractor_p: float, seed: int):
        from clara.rl.rollout import CandidateRetriever

        cand = self.cache.candidates(records)  # (Q, N, m, H)
        return CandidateRetriever(cand, k=self.cfg.rl.top_k, scoring=self.cfg.joint.scoring.value,
                                  distractor_p=distractor_p, gold=[r.pos_index for r in records], seed=seed)

    def forward(self, records: Sequence) -> tuple[torch.Tensor, dict[str, float]]:
        from clara.rl.grpo import group_advantages, policy_loss
        from clara.rl.rewards import RewardWeights, combine_rewards, distractor_probability
        from clara.rl.rollout import RolloutParams, SamplingPolicy, rollout, sequence_logprobs

        rl, seed = self.cfg.rl, self.cfg.train.seed * 1_000_003 + self.step
        if rl.cold_start:  # DGPO cold start: learn the search protocol from the teacher's trajectories
            from clara.rl.coldstart import cold_start_loss

            loss, metrics = cold_start_loss(self.model, records, self._retriever(records, 0.0, seed), rl.max_turn_tokens)
            self.step += 1
            return loss, metrics
        p_distract = distractor_probability(self.step, rl.curriculum_steps or self.cfg.train.max_steps,
                                            rl.distractor_start, rl.distractor_end, rl.distractor_base)
        params = RolloutParams(rl.max_turns, rl.max_turn_tokens, rl.temperature)
        trajs = rollout(self.model, [r.question for r in records], rl.group_size,
                        self._retriever(records, p_distract, seed), SamplingPolicy(seed=seed), params)
        weights = RewardWeights(answer=rl.reward_answer, format=rl.reward_format,
                                self_certainty=rl.reward_self_certainty, retrieval_hit=rl.reward_retrieval_hit,
                                metric=rl.answer_metric, bridge_hit=rl.reward_bridge_hit)  # fmt: skip
        golds = [r.answers for r in records]
        reward, terms = combine_rewards(trajs, golds, weights, rl.group_size, [r.pos_index for r in records])
        adv, zero_var = group_advantages(reward, rl.group_size)
        # reference/teacher first: swapping weights in place after the policy forward would
        # invalidate the tensors autograd saved for backward
        with torch.no_grad(), self.model.using("generator"):
            with swapped_weights(self.gen_params, self.reference):
                ref, _ = sequence_logprobs(self.model, trajs, "generator", rl.temperature)
            teacher, failed = None, None
            if rl.dgpo_beta:
                failed = reward < rl.dgpo_threshold  # (B,)
                with swapped_weights(self.gen_params, self.teacher):
                    teacher, _ = sequence_logprobs(self.model, trajs, "generator", rl.temperature)
        logp, mask = sequence_logprobs(self.model, trajs, "generator", rl.temperature)  # (B, L), with grad
        old = torch.zeros_like(logp).masked_scatter(mask, torch.tensor([x for t in trajs for x in t.logp]))
        loss, stats = policy_loss(
            logp, old, adv.to(logp.device), mask, clip_eps=rl.clip_eps, ref_logp=ref, beta=rl.beta,
            teacher_logp=teacher, teacher_rows=failed, beta_teacher=rl.dgpo_beta, mode=rl.aggregation,
            max_len=rl.max_len or rl.max_turns * rl.max_turn_tokens,
        )
        metrics = self._metrics(records, trajs, reward, terms, zero_var, stats, p_distract, failed)
        self.step += 1
        return loss, metrics

    def _metrics(self, records, trajs, reward, terms, zero_var, stats, p_distract, failed) -> dict[str, float]:
        from clara.answers import exact_match
        from clara.rl.rewards import behaviour_metrics, written_recall

        def doc_text(group: int, cand: int) -> str:
            return records[group].candidates[cand].as_text()

        out = {
            "reward_mean": float(reward.mean()), "reward_std": float(reward.std(unbiased=False)),
            "zero_var_groups": float(zero_var.float().mean()),
            "em": sum(t.answer is not None and exact_match(t.answer, records[t.group].answers) for t in trajs) / len(trajs),
            "format": float(terms["format"].mean()), "bridge_hit": float(terms["bridge_hit"].mean()),
            "distractor_p": p_distract, **stats,
            **behaviour_metrics(trajs, doc_text),
        }
        recall = written_recall(trajs, records)  # gold recall of the written queries
        if recall is not None:
            out["recall_written"] = recall
        if failed is not None:
            out["dgpo_rows"] = float(failed.float().mean())
        out["tokens"] = float(sum(t.num_generated for t in trajs))
        return out

    @torch.no_grad()
    def raw_question_recall(self, records) -> float:
        """Gold recall@k when the raw question is the query (the baseline for query rewriting)."""
        _, ids = self._retriever(records, 0.0, 0).retrieve(self.model, [r.question for r in records], range(len(records)))
        return sum(bool(set(i) & set(r.pos_index)) for i, r in zip(ids, records)) / len(records)


def build_rl_model(cfg: ClaraConfig):
    from clara.model.loading import model_from_adapters

    model = model_from_adapters(cfg, cfg.rl.init_adapters, "rl.init_adapters",
                                "rl.init_adapters is empty: the agent starts from fresh adapters (mechanics only)")
    if not cfg.rl.init_adapters:
        model.adapters.copy_adapter("compressor", "query")
    model.set_trainable(["generator"], mem_embed=False)
    return model


def load_teacher(cfg: ClaraConfig, model) -> list[torch.Tensor] | None:
    """The teacher's generator weights (``rl.teacher_adapters``), or None (= the starting generator)."""
    if not cfg.rl.teacher_adapters:
        return None
    from clara.model.loading import resolve_adapters_dir

    start = [p.detach().clone() for p in model.adapters.parameters("generator")]
    model.load_adapters(resolve_adapters_dir(cfg.rl.teacher_adapters, "rl.teacher_adapters"))
    teacher = [p.detach().clone() for p in model.adapters.parameters("generator")]
    if cfg.rl.init_adapters:
        model.load_adapters(resolve_adapters_dir(cfg.rl.init_adapters, "rl.init_adapters"))
    else:
        with torch.no_grad():
            for p, v in zip(model.adapters.parameters("generator"), start):
                p.copy_(v)
    return teacher


def rl_records(cfg: ClaraConfig) -> list:
    from clara.world.splits import load_split

    records = load_split(cfg, cfg.joint.train_split, train=True)
    if cfg.rl.question_types:
        records = [r for r in records if r.type in set(cfg.rl.question_types)]
    if len(records) < cfg.train.batch_size:
        raise ConfigError(f"config key 'rl.question_types': {len(records)} training questions left, fewer than "
                          f"train.batch_size={cfg.train.batch_size}; widen the types or lower the batch size")
    return records


def run_rl(cfg: ClaraConfig, resume: bool = False, allow_config_change: bool = False) -> dict[str, Any]:
    """Train the search agent; returns the TrainResult and the raw-question recall baseline."""
    from clara.model.memory_cache import MemoryCache
    from clara.model.memory_cache import cache_root
    from clara.training import ResumableBatches, Trainer

    records = rl_records(cfg)
    model = build_rl_model(cfg)
    teacher = load_teacher(cfg, model)
    cache = MemoryCache.for_model(model, cache_root(cfg))
    cache.fill(model, (d for r in records for d in r.candidates))
    objective = RLObjective(model, cache, cfg, teacher)
    batches = ResumableBatches(records, cfg.train.batch_size, list, seed=cfg.train.seed)
    trainer = Trainer(objective, cfg.train, Path(cfg.out_dir), lambda m, batch: m(batch), batches,
                      config_for_hash=cfg, allow_config_change=allow_config_change)
    trainer.register_state("rl", lambda: {"step": objective.step},
                          lambda s: setattr(objective, "step", int(s["step"])))
    result = trainer.train(resume=resume)
    model.save_adapters(Path(cfg.out_dir) / "adapters")
    return {"result": result, "raw_question_recall": objective.raw_question_recall(records[: cfg.joint.eval_limit])}


__all__ = ["AnswerMetric", "RLObjective", "build_rl_model", "load_teacher", "rl_records", "run_rl", "swapped_weights"]
