"""The shared training loop: accumulation, clipping, NaN guard, metrics, atomic checkpoints, resume.

Every stage (SCP, joint, RL) trains through :class:`Trainer`; see ``loop.py``.
"""

from clara.training.checkpoint import find_resumable, list_checkpoints, load_checkpoint
from clara.training.data_state import ResumableBatches
from clara.training.distributed import DistContext, init_distributed
from clara.training.loop import Trainer, TrainResult, lr_multiplier, seed_everything
from clara.training.metrics import MetricsLogger, read_metrics

__all__ = [
    "DistContext", "MetricsLogger", "ResumableBatches", "TrainResult", "Trainer", "find_resumable",
    "init_distributed", "list_checkpoints", "load_checkpoint", "lr_multiplier", "read_metrics", "seed_everything",
]
