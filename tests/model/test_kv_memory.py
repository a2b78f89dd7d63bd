"""Memory read as every layer's keys and values (model.memory_readout=kv): the prefix is exact, the
states are those of the plain layout, gradients reach the compressor, and the choice travels with
saved adapters."""

import dataclasses

import pytest
import torch

from clara.errors import ConfigError
from clara.model.generation import SamplingParams, decode, generate_from_embeds, new_kv_cache
from clara.model.kv_memory import fixed_end_positions, kv_shape, pack_kv, prefix_from_memory
from clara.model.memory import left_pad


@pytest.fixture
def kv_model(model_cfg, perturb):
    from clara.model.clara_model import ClaraModel

    m = ClaraModel.from_config(dataclasses.replace(model_cfg, memory_readout="kv"))
    perturb(m, seed=0)
    return m


def _kv_of(model, ids, mask, end):
    """Keys and values of every position of left-padded ``ids``, the last token at ``end - 1``, packed."""
    kw, cache = new_kv_cache(model.lm)
    with torch.no_grad(), model.using(None):
        model.lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=fixed_end_positions(mask, end),
                               use_cache=True, **{kw: cache})
    return pack_kv(cache, torch.arange(ids.shape[1]).expand(ids.shape[0], -1))  # (B, T, L·2·h_kv·d)


def test_fixed_end_positions_end_every_row_at_the_same_place():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert fixed_end_positions(mask, 10).tolist() == [[0, 0, 8, 9], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="do not fit"):
        fixed_end_positions(mask, 3)


def test_a_prefix_of_text_keys_and_values_reads_as_the_text_itself(kv_model):
    """Generating after a prefix made of a text's keys and values = generating after the text as tokens."""
    model = kv_model
    text, prompt = model._ids("the cat sat on the mat"), model._ids(" and then it")
    start = len(text) + 5  # the text sits at start - len .. start - 1, the prompt from start on (distances as whole)
    text_ids, text_mask = left_pad([text], model.pad_id)
    prefix = prefix_from_memory(_kv_of(model, text_ids, text_mask, start), model.kv_shape, start)
    assert prefix.length == len(text)
    prompt_ids, prompt_mask = left_pad([prompt, prompt[1:]], model.pad_id)  # two rows, one padded
    params = SamplingParams(max_new_tokens=5)
    embed = model.lm.get_input_embeddings()
    both = [[]] * 2
    with torch.no_grad(), model.using(None):
        two = dataclasses.replace(prefix, kv=tuple((k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1))
                                                  for k, v in prefix.kv))
        ours = generate_from_embeds(model.lm, embed(prompt_ids), prompt_mask, params, prefix=two)
        for row, p in enumerate([prompt, prompt[1:]]):
            whole_ids, whole_mask = left_pad([text + p], model.pad_id)
            both[row] = generate_from_embeds(model.lm, embed(whole_ids), whole_mask, params)[0]
            # and the first logits agree, not only the argmax
            seen = []

            def first(logits, i):
                seen.append(logits)
                return logits.argmax(-1), torch.ones(1, dtype=torch.bool)

            decode(model.lm, embed(whole_ids), whole_mask, 1, first)
            row_ids, row_mask = left_pad([p], model.pad_id)
            decode(model.lm, embed(row_ids), row_mask, 1, first, prefix=prefix)
            torch.testing.assert_close(seen[0], seen[1], atol=1e-4, rtol=1e-4)
    assert ours == both


def test_kv_memory_shape_states_and_prefix(kv_model, model_cfg, perturb):
    from clara.model.clara_model import ClaraModel

    docs = ["alpha beta gamma delta", "a much longer document about epsilon and zeta and eta"]
    mem = kv_model.compress(docs)
    shape = kv_shape(kv_model.lm.config)
    assert kv_model.memory_width == kv_model.hidden_size + shape.width
    assert mem.shape == (2, kv_model.num_mem, kv_model.memory_width)
    states = ClaraModel.from_config(model_cfg)
    perturb(states, seed=0)  # the same weights, read as states: the same last-layer states
    torch.testing.assert_close(kv_model.memory_states(mem), states.compress(docs), atol=1e-4, rtol=1e-4)
    prefix = kv_model.memory_prefix(mem[:, None].expand(2, 3, -1, -1))  # three blocks per row
    assert prefix.length == 3 * kv_model.num_mem and prefix.start == kv_model.chunk_len + kv_model.num_mem
    assert prefix.kv[0][0].shape == (2, shape.kv_heads, 3 * kv_model.num_mem, shape.head_dim)
    assert kv_model.memory_prefix(None) is None and states.memory_prefix(mem) is None
    assert kv_model.tokens.slot_id not in kv_model.prompt_ids("q?", kv_model._slots(3))  # no slots: a prefix


def test_the_generator_reads_the_memory_and_the_compressor_learns_from_it(kv_model):
    model = kv_model
    model.set_trainable(["compressor", "generator"])
    docs, questions, answers = ["the red fox", "a blue whale swims"], ["what colour?", "what swims?"], ["red", "whale"]
    mem = model.compress(docs)
    loss = model.generator_loss(questions, mem[:, None], answers)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("compressor" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any("generator" in n and g.abs().sum() > 0 for n, g in grads.items())
    with torch.no_grad():
        swapped = model.generator_loss(questions, mem.flip(0)[:, None], answers, reduction="none")
        right = model.generator_loss(questions, mem[:, None], answers, reduction="none")
        assert not torch.allclose(swapped, right)  # the memory changes the answer's likelihood
        batch = model.generate(questions, mem[:, None], max_new_tokens=4)
        alone = [model.generate([q], mem[i : i + 1, None], max_new_tokens=4)[0] for i, q in enumerate(questions)]
    assert batch == alone
    with pytest.raises(ValueError, match="W="):
        model.generator_loss(questions, model.memory_states(mem)[:, None], answers)


def test_kv_readout_is_saved_and_rebuilt(kv_model, tmp_path):
    from clara.model.loading import load_trained_model

    kv_model.save_adapters(tmp_path / "adapters")
    loaded = load_trained_model(tmp_path / "adapters", precision="fp32")
    assert loaded.memory_readout.value == "kv" and loaded.memory_width == kv_model.memory_width
    torch.testing.assert_close(loaded.compress(["some text"]), kv_model.compress(["some text"]))


def test_kv_readout_changes_the_compressor_hash(kv_model, model_cfg, perturb):
    from clara.model.clara_model import ClaraModel

    states = ClaraModel.from_config(model_cfg)
    perturb(states, seed=0)
    assert states.compressor_hash() != kv_model.compressor_hash()


def test_kv_readout_refuses_a_splice_side_norm(model_cfg):
    with pytest.raises(ConfigError, match="model.memory_norm"):
        dataclasses.replace(model_cfg, memory_readout="kv", memory_norm="center")


def test_banks_caches_and_the_agent_refuse_kv_memory(kv_model):
    from clara.model.memory_store import compress_batches
    from clara.rl.rollout import sequence_embeds

    with pytest.raises(ConfigError, match="memory_readout=kv"):
        next(compress_batches(kv_model, ["a text"], batch_size=1))
    with pytest.raises(ConfigError, match="memory_readout=kv"):
        sequence_embeds(kv_model, [])


def test_encoder_rows_put_memory_after_the_text_or_one_after_each_segment():
    from clara.model.memory import encoder_row

    assert encoder_row([1, 2, 3, 4, 5], [90, 91]) == [1, 2, 3, 4, 5, 90, 91]
    assert encoder_row([1, 2, 3, 4, 5], [90, 91], interleaved=True) == [1, 2, 3, 90, 4, 5, 91]
    assert encoder_row([1, 2, 3], [90, 91, 92, 93], interleaved=True) == [1, 90, 2, 91, 3, 92, 93]  # empty last segment
    assert encoder_row([], [90, 91], interleaved=True) == [90, 91]


@pytest.mark.parametrize("readout", ["states", "kv"])
def test_interleaved_memory_reads_each_segment_and_batches_as_alone(model_cfg, perturb, tmp_path, readout):
    from clara.model.clara_model import ClaraModel
    from clara.model.loading import load_trained_model

    cfg = dataclasses.replace(model_cfg, memory_layout="interleaved", memory_readout=readout)
    model = ClaraModel.from_config(cfg)
    perturb(model, seed=0)
    end = ClaraModel.from_config(dataclasses.replace(cfg, memory_layout="end"))
    perturb(end, seed=0)
    docs = ["alpha beta gamma delta epsilon zeta eta theta", "one two"]
    mem, text_mean = model.compress(docs, return_text_mean=True)
    assert mem.shape == (2, model.num_mem, model.memory_width) and text_mean.shape == (2, model.hidden_size)
    torch.testing.assert_close(model.compress(docs[1:]), mem[1:], atol=1e-5, rtol=1e-5)  # left padding changes nothing
    assert not torch.allclose(model.memory_states(mem), end.memory_states(end.compress(docs)), atol=1e-3)
    # the first memory token reads only its own segment: a change after it leaves it as it was
    changed = model.compress(["alpha beta gamma delta epsilon zeta eta omega"])
    torch.testing.assert_close(changed[0, 0], mem[0, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed[0, -1], mem[0, -1], atol=1e-4)
    model.set_trainable(["compressor", "generator"])
    model.generator_loss(["what?", "which?"], mem[:, None], ["beta", "two"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters("compressor"))
    assert model.compressor_hash() != end.compressor_hash()
    model.save_adapters(tmp_path / "adapters")
    loaded = load_trained_model(tmp_path / "adapters", precision="fp32")
    assert loaded.memory_layout.value == "interleaved"
    torch.testing.assert_close(loaded.compress(docs), model.compress(docs))


def test_the_serving_benchmark_refuses_kv_memory(kv_model):
    from clara.eval.bench_serving import bench_breakdown, bench_prefill

    with pytest.raises(ConfigError, match="memory_readout=kv"):
        bench_prefill(kv_model, 1, 8, 1, 1)
    with pytest.raises(ConfigError, match="memory_readout=kv"):
        bench_breakdown(kv_model, None, ["q?"], 1, 1, "direct")
