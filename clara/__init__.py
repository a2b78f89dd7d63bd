"""CLaRa: one causal-LM backbone, three LoRA adapters (compressor, query, generator),
retrieval and generation trained jointly in one continuous space.

Stage recipes live in ``clara.pretrain`` (SCP), ``clara.joint`` (joint training, RL),
kernels in ``clara.kernels`` and evaluation in ``clara.eval``.
"""

__version__ = "0.1.0"
