"""Kernel tests run Triton through its CPU interpreter unless CUDA is present.

Triton fixes interpreter-or-compiler when ``triton.language`` is first imported. If this
conftest runs first, it sets ``TRITON_INTERPRET=1`` for the process. If something imported
triton earlier (peft and deepspeed do, so a full-suite run collects them first), the
interpreter tests are run once in a fresh ``pytest`` subprocess with the variable set, and
each test here reports its outcome there (see ``pytest_pyfunc_call``).
"""

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import pytest
import torch

_SUBPROCESS_FLAG = "CLARA_KERNEL_TESTS_SUBPROCESS"
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def _interpreter_in_process() -> bool:
    from clara.kernels.dispatch import triton_interpreting

    return triton_interpreting()


def _subprocess_outcomes(config) -> dict:
    """Run the interpreter tests in a fresh process once; {(module, test name): failure text or ''}."""
    cached = getattr(config, "_clara_kernel_outcomes", None)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = os.path.join(tmp, "junit.xml")
        env = dict(os.environ, TRITON_INTERPRET="1", **{_SUBPROCESS_FLAG: "1"})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu and not slow",
               "--junitxml", xml_path, os.path.dirname(__file__)]
        subprocess.run(cmd, cwd=config.rootpath, env=env, capture_output=True, timeout=900)
        outcomes = {}
        if os.path.exists(xml_path):
            for case in ET.parse(xml_path).getroot().iter("testcase"):
                bad = [c for c in case if c.tag in ("failure", "error")]
                module = case.get("classname", "").rsplit(".", 1)[-1]
                outcomes[(module, case.get("name"))] = (bad[0].get("message") or "failed") if bad else ""
    config._clara_kernel_outcomes = outcomes
    return outcomes


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if "interpret" not in pyfuncitem.fixturenames or _interpreter_in_process():
        return None
    if os.environ.get(_SUBPROCESS_FLAG):
        raise AssertionError("TRITON_INTERPRET=1 did not take effect in the interpreter subprocess")
    outcome = _subprocess_outcomes(pyfuncitem.config).get((pyfuncitem.path.stem, pyfuncitem.name))
    if outcome is None:
        raise AssertionError("the TRITON_INTERPRET=1 subprocess did not run this test")
    if outcome:
        raise AssertionError(f"failed in the TRITON_INTERPRET=1 subprocess: {outcome}")
    return True


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Scores are accumulated in float32 for every dtype, so they agree to float32 rounding;
# gradients are rounded to the input dtype (bf16 keeps 8 bits, fp16 11).
SCORE_ATOL = 1e-5
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels in the interpreter on CPU tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return torch.device("cpu")


@pytest.fixture
def cuda(monkeypatch):
    """Run the compiled kernels (only collected when CUDA exists: tests are marked gpu)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return torch.device("cuda")


def assert_close_scaled(actual, expected, rtol):
    """|a - e| <= rtol * max|e|: one tolerance per tensor, robust to tiny entries."""
    scale = expected.float().abs().max().clamp_min(1e-12)
    err = (actual.float() - expected.float()).abs().max()
    assert err <= rtol * scale, f"max error {err.item():.3g} > {rtol} * {scale.item():.3g}"


def assert_topk_matches(values, indices, ref_values, ref_indices, ref_all_scores, atol=SCORE_ATOL):
    """Top-k agreement up to ties: same values; every returned row scores its value under
    the reference; rows are distinct; where the reference has no near-tie, same row."""
    assert values.shape == ref_values.shape and indices.shape == ref_indices.shape
    torch.testing.assert_close(values.float(), ref_values.float(), atol=atol, rtol=0)
    picked = ref_all_scores.gather(1, indices)  # reference score of every returned row
    torch.testing.assert_close(picked, values.float(), atol=atol, rtol=0)
    for row in indices:
        assert row.unique().numel() == row.numel(), "duplicate rows in one top-k"
    # positions whose reference value is separated from all other scores by > 2 atol
    gaps = (ref_all_scores[:, None, :] - ref_values[:, :, None]).abs()  # (B, k, N)
    isolated = (gaps <= 2 * atol).sum(-1) == 1
    assert torch.equal(indices[isolated], ref_indices[isolated])


@pytest.fixture
def kc():
    """Shared tolerances and checks (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        SCORE_ATOL=SCORE_ATOL,
        GRAD_RTOL=GRAD_RTOL,
        assert_close_scaled=assert_close_scaled,
        assert_topk_matches=assert_topk_matches,
    )
