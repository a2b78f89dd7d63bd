"""Adapter switching keeps gradients: one loss through all three adapters trains all three."""

import pytest
import torch

DOCS = ["Kalo was born in Venra and studied physics.", "The museum of Mira is 300 years old.",
        "Selad founded the bridge of Torven in 1802."]
QUESTIONS = ["Where was Kalo born?", "Who founded the bridge of Torven?"]
ANSWERS = ["Venra", "Selad"]


def joint_loss(model, tau=0.1):
    """compress -> encode_query -> cosine scores -> soft pick -> generator loss (DESIGN §5, soft only)."""
    mem = model.compress(DOCS)  # (N, m, H)
    q = model.encode_query(QUESTIONS)  # (B, m, H)
    scores = torch.nn.functional.cosine_similarity(q.flatten(1)[:, None], mem.flatten(1)[None], dim=-1)  # (B, N)
    weights = torch.softmax(scores / tau, dim=-1)  # (B, N)
    selected = torch.einsum("bn,nmh->bmh", weights, mem)[:, None]  # (B, 1, m, H)
    return model.generator_loss(QUESTIONS, selected, ANSWERS)


def grad_norm(params):
    return sum(float(p.grad.norm()) for p in params if p.grad is not None)


def test_one_loss_trains_every_adapter_and_no_base_weight(model):
    loss = joint_loss(model)
    loss.backward()
    for name in ("compressor", "query", "generator"):
        assert grad_norm(model.adapters.parameters(name)) > 0, f"adapter {name} got no gradient"
    assert model.mem_embed.grad is not None and float(model.mem_embed.grad.norm()) > 0
    trained = {id(p) for n in model.adapters.names for p in model.adapters.parameters(n)} | {id(model.mem_embed)}
    base = [(n, p) for n, p in model.named_parameters() if id(p) not in trained]
    assert base, "expected frozen base parameters"
    assert all(p.grad is None and not p.requires_grad for _, p in base), [n for n, p in base if p.grad is not None]


def test_plain_peft_set_adapter_loses_the_first_adapters_gradient(model):
    """The pitfall of DESIGN §3 on the raw peft API — why ClaraModel.using exists."""
    peft = model.adapters.peft
    x = model.tokenizer("Kalo was born in Venra.", return_tensors="pt")["input_ids"]
    peft.base_model.set_adapter("compressor")
    h1 = model.lm.get_decoder()(input_ids=x).last_hidden_state
    peft.base_model.set_adapter("generator")  # sets requires_grad=False on the compressor
    h2 = model.lm.get_decoder()(input_ids=x).last_hidden_state
    (h1.sum() + h2.sum()).backward()
    assert all(p.grad is None for p in model.adapters.parameters("compressor"))  # silently lost
    assert grad_norm(model.adapters.parameters("generator")) > 0


def test_frozen_adapter_gets_no_gradient(model):
    model.set_trainable(["query", "generator"])  # joint training: the compressor is frozen
    joint_loss(model).backward()
    assert all(p.grad is None for p in model.adapters.parameters("compressor"))
    assert grad_norm(model.adapters.parameters("query")) > 0
    assert grad_norm(model.adapters.parameters("generator")) > 0
    assert not any(p.requires_grad for p in model.adapters.parameters("compressor"))


def test_adapters_differ_and_using_restores_the_previous_adapter(model):
    with torch.no_grad():
        a = model.compress(DOCS[:1], adapter="compressor")
        b = model.compress(DOCS[:1], adapter="query")
        with model.using(None):  # bare backbone
            ids = model.tokenizer(DOCS[0], return_tensors="pt")["input_ids"]
            model.lm.get_decoder()(input_ids=ids)
    assert not torch.allclose(a, b)
    assert model.adapters.active == "compressor"
    with model.using("generator"):
        assert model.adapters.active == "generator"
    assert model.adapters.active == "compressor"
    with pytest.raises(ValueError, match="unknown adapter"):
        model.compress(DOCS[:1], adapter="nope")


def test_copy_adapter_makes_query_equal_compressor(model):
    with torch.no_grad():
        assert not torch.allclose(model.compress(DOCS), model.encode_query(DOCS))
        model.adapters.copy_adapter("compressor", "query")
        torch.testing.assert_close(model.compress(DOCS), model.encode_query(DOCS))
    assert all(p.requires_grad for p in model.adapters.parameters("query"))


def test_fast_switch_runs_the_same_adapter_as_peft_set_adapter(model):
    """AdapterSet switches by setting each LoRA layer's active adapter (cached layer list); every
    adapter then gives exactly the output of peft's own set_adapter, and gradients still flow."""
    ids = model.tokenizer(DOCS[0], return_tensors="pt")["input_ids"]
    sets = model.adapters
    assert sets.fast_switch and sets._layers
    with torch.no_grad():
        for name in ("generator", "query", "compressor", "generator"):
            sets.activate(name)
            assert all(m.active_adapters == [name] for m in sets._layers)
            fast = model.lm.get_decoder()(input_ids=ids).last_hidden_state
            sets.peft.base_model.set_adapter(name)
            slow = model.lm.get_decoder()(input_ids=ids).last_hidden_state
            torch.testing.assert_close(fast, slow, rtol=0, atol=0)
            sets._sync_requires_grad()  # peft's path flipped requires_grad; AdapterSet owns it
    test_one_loss_trains_every_adapter_and_no_base_weight(model)


def test_a_bare_backbone_pass_inside_a_step_keeps_every_trained_adapter_training(model):
    """``using(None)`` (peft's disable_adapter) re-enables the layers through set_adapter, which freezes
    every adapter but the active one: a teacher pass on the bare backbone must not stop the step's training."""
    model.set_trainable(["compressor", "generator"])
    mem = model.compress(DOCS[:2])
    with model.using("generator"):
        pass
    with torch.no_grad(), model.using(None):
        model.generator_loss(QUESTIONS, None, ANSWERS, adapter=None)
    assert all(p.requires_grad for n in ("compressor", "generator") for p in model.adapters.parameters(n))
    model.generator_loss(QUESTIONS, mem[:, None], ANSWERS).backward()
    assert grad_norm(model.adapters.parameters("compressor")) > 0
    assert grad_norm(model.adapters.parameters("generator")) > 0
