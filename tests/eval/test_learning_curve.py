"""The learning-curve fit and its reach, on eval JSONs made by hand."""

import json
import math

import pytest

from clara.errors import DataError
from clara.eval.learning_curve import docs_to_reach, fit_log_linear, main, read_point


def _eval(path, em, wrong=0.02, nll=(0.7, 5.5)):
    path.write_text(json.dumps({"runs": [{"settings": {"memory": {"em": em}, "wrong_memory": {"em": wrong}},
                                          "nll_right": nll[0], "nll_wrong": nll[1]}]}))
    return path


def test_fit_recovers_a_log_linear_curve_and_its_reach(tmp_path):
    a, b = 0.05, 0.04
    specs = [f"{d}={_eval(tmp_path / f'e{d}.json', a + b * math.log10(d))}=cpu" for d in (100, 1000, 10000)]
    specs.append(f"16000={_eval(tmp_path / 'gpu.json', 0.9)}=gpu")  # another recipe: left out of the fit
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    assert main([*sum((["--point", s] for s in specs), []), "--fit-label", "cpu", "--target", "0.25",
                 "--sec-per-doc", "2", "--gpu-docs-per-hour", "1000", "--out", str(out), "--png", str(png)]) == 0
    res = json.loads(out.read_text())
    assert res["fit"]["a"] == pytest.approx(a) and res["fit"]["b"] == pytest.approx(b) and res["fit"]["points"] == 3
    assert res["docs_to_target"] == pytest.approx(1e5, rel=1e-6)  # 0.05 + 0.04 * 5 = 0.25
    assert res["cpu_hours"] == pytest.approx(1e5 * 2 / 3600) and res["gpu_hours"] == pytest.approx(100)
    assert [p["docs"] for p in res["points"]] == [100, 1000, 10000, 16000]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_flat_or_falling_curve_never_reaches_and_bad_points_are_named(tmp_path):
    pts = [read_point(f"{d}={_eval(tmp_path / f'e{d}.json', 0.2 - 0.01 * i)}") for i, d in enumerate((10, 100))]
    a, b = fit_log_linear(pts)
    assert b < 0 and docs_to_reach(a, b, 0.5) is None
    with pytest.raises(DataError, match="two or more"):
        fit_log_linear(pts[:1])
    with pytest.raises(DataError, match="DOCS=FILE"):
        read_point("many=x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="bad.json"):
        read_point(f"5={bad}")
