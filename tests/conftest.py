import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# training runs draw OUT/curves.png at each checkpoint, about 1 s a figure: 90 s over the suite's ~100
# checkpoints; tests/training/test_loop.py turns it back on where the figure is what it tests
os.environ.setdefault("CLARA_PLOTS", "0")
# precision auto is bf16 on a CPU with avx512_bf16 or AMX and fp32 elsewhere: the suite runs fp32 on every
# machine, so that its figures do not depend on the CPU; tests of auto and bf16 set them explicitly
os.environ.setdefault("CLARA_PRECISION", "fp32")


def _set_triton_interpreter_without_cuda() -> None:
    # triton reads TRITON_INTERPRET when triton.language is first imported, and peft and
    # deepspeed import it early; set it before anything else so the whole suite shares one
    # interpreter-mode triton on CPU machines.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_set_triton_interpreter_without_cuda()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """One random-init tiny backbone for the whole run (mechanics tests only)."""
    from clara.model.backbone import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("backbones") / "tiny", seed=0)


@pytest.fixture(scope="session")
def smollm2_reader():
    """The demo's SmolLM2 reader backbone (slow tests); skips when `make demo` has not built it."""
    from pathlib import Path

    reader = Path(__file__).resolve().parents[1] / "out" / "backbones" / "smollm2-135m-reader"
    if not (reader / "config.json").is_file():
        pytest.skip(f"{reader} missing: run `make demo` (or `clara backbone reader`, see README)")
    return reader


@pytest.fixture(scope="session")
def world_0(tmp_path_factory):
    """The world of the release and of every quality figure (`clara world --seed 0 --entities 300`)."""
    from clara.world import generate_world, write_world

    return write_world(generate_world(seed=0, entities=300), tmp_path_factory.mktemp("worlds") / "world-0")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A small world (40 entities, 8 candidates per question) shared by stage-2 and RL tests."""
    from clara.world import generate_world, write_world

    return write_world(generate_world(seed=0, entities=40, candidates=8), tmp_path_factory.mktemp("worlds") / "w")



def _perturb_adapters(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give every adapter different, non-zero LoRA weights (a fresh LoRA B is zero, so every
    adapter equals the base model and A gets no gradient)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.adapters.names:
            for p in model.adapters.parameters(name):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def perturb():
    """``perturb(model, seed=0, scale=0.05)``: non-zero, seeded LoRA weights in every adapter."""
    return _perturb_adapters
