"""The SCP benchmark runs every step kind it reports (tiny backbone, one repetition: mechanics only)."""

import math

from clara.eval.bench_scp import bench


def test_bench_times_every_step_kind_and_gives_finite_ratios(tiny_backbone):
    r = bench(str(tiny_backbone), "tiny", cr=8, chunk_len=32, batch_size=2, reps=1, max_target=16, switches=4)
    assert set(r["median_s"]) == {"scp", "lora_text", "scp_peft_switch", "scp_bf16"}
    assert all(len(t) == 1 and t[0] > 0 for t in r["times"].values())
    for key in ("ratio_scp_over_lora", "ratio_peft_switch_over_cached", "ratio_fp32_over_bf16",
                "ratio_switch_peft_over_cached"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["num_mem"] == 4 and r["batch_size"] == 2
