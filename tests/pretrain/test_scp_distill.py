"""SCP self-distillation from the open-book view (scp.distill_*) on the tiny backbone: mechanics only."""

import dataclasses

import pytest
import torch

from clara.config import ScpConfig
from clara.errors import ConfigError
from clara.pretrain.scp import ScpObjective, build_scp_model, hidden_distill, scp_loss

from .test_scp import examples, make_cfg


def test_hidden_distill_matches_hand_values():
    t = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    assert hidden_distill(t, t).item() == 0.0
    assert hidden_distill([torch.zeros(1, 2), torch.zeros(2, 2)], t).item() == pytest.approx(1.0)
    # layer 1: ||(0,4)-(3,4)||^2 / ||(3,4)||^2 = 9/25; layer 2: row 1 (1,1) vs (1,0) differs by 1, row 2 is equal,
    # over a squared norm of 2: 1/2; the term is the mean of the two
    s = [torch.tensor([[0.0, 4.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])]
    assert hidden_distill(s, t).item() == pytest.approx((9 / 25 + 1 / 2) / 2)
    with pytest.raises(ValueError):
        hidden_distill(s[:1], t)


def test_distill_term_adds_to_the_loss_and_reaches_compressor_and_generator(tiny_backbone, tmp_path, fresh_docs):
    cfg = make_cfg(tiny_backbone, tmp_path)
    distill = dataclasses.replace(cfg.scp, distill_weight=0.5, distill_layers=(1, 2))
    model = build_scp_model(cfg)
    with torch.no_grad():  # a generator adapter that is not the identity, so the teacher choice matters
        for p in model.adapters.parameters("generator"):
            p.add_(0.05 * torch.randn_like(p))
    batch = examples(fresh_docs[:4], qa_layout="rows")
    plain, m0 = scp_loss(model, batch, mse_weight=0.1)
    full, m1 = scp_loss(model, batch, mse_weight=0.1, distill=distill)
    assert "distill" not in m0 and m1["distill"] > 0 and m1["teacher_ce"] > 0
    assert m1["ce"] == pytest.approx(m0["ce"], rel=1e-6)
    assert full.item() == pytest.approx(m1["ce"] + 0.1 * m1["mse"] + 0.5 * m1["distill"], rel=1e-5)
    base = scp_loss(model, batch, mse_weight=0.1, distill=dataclasses.replace(distill, distill_teacher="base"))[1]
    assert base["teacher_ce"] != pytest.approx(m1["teacher_ce"], rel=1e-4)
    # the term alone (full - plain: CE and MSE are the same graph values) reaches compressor and generator
    model.zero_grad(set_to_none=True)
    (full - plain).backward()
    for name in ("compressor", "generator"):
        grads = [p.grad for p in model.adapters.parameters(name) if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name


def test_distill_options_are_checked(tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match="scp.distill_teacher"):
        ScpConfig(distill_teacher="oracle")
    with pytest.raises(ConfigError, match="scp.distill_layers"):
        ScpConfig(distill_layers=())
    with pytest.raises(ConfigError, match="scp.distill_weight"):
        ScpConfig(distill_weight=-1.0)
    cfg = make_cfg(tiny_backbone, tmp_path)
    model = build_scp_model(cfg)
    deep = dataclasses.replace(cfg.scp, distill_weight=1.0, distill_layers=(1, 99))
    with pytest.raises(ConfigError, match=r"scp.distill_layers.*hidden states 0..2"):  # before any step
        ScpObjective(model, deep)
    ScpObjective(model, dataclasses.replace(deep, distill_weight=0.0))  # off: the layers are never read
