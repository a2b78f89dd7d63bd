"""Plots: training curves from metrics.jsonl, the CR sweep, retrieval vs baselines — valid PNGs, clear errors."""

import argparse
import json

import pytest

from clara.errors import DataError
from clara.eval import lens_cli
from clara.eval.plots import plot_cr_sweep, plot_retrieval, plot_settings, sweep_points
from clara.training.curves import curve_series, plot_training_curves
from clara.training.metrics import MetricsLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_shape(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC
    return mpimg.imread(path).shape  # (height, width, channels)


def write_metrics(path):
    logger = MetricsLogger(path)
    for step in range(1, 21):
        logger.log({"step": step, "kind": "train", "loss": 3.0 / step, "lr": 3e-4, "reward": step / 20})
        if step % 5 == 0:
            logger.log({"step": step, "kind": "eval", "loss": 3.5 / step, "R@5/single_hop": step / 25,
                        "R@5/all": step / 30})
    logger.close()
    return path


def sweep_results():
    def settings(em):
        return {"memory": {"n": 10, "em": em, "f1": em + 0.1, "cover_em": em},
                "wrong_memory": {"n": 10, "em": 0.05, "f1": 0.1, "cover_em": 0.05}}

    runs = [{"cr": cr, "settings": settings(em)} for cr, em in ((4, 0.5), (16, 0.4), (64, 0.2))]
    runs[0]["settings"].update(raw_text={"n": 10, "em": 0.6, "f1": 0.7, "cover_em": 0.6},
                               closed_book={"n": 10, "em": 0.02, "f1": 0.05, "cover_em": 0.02})
    return {"runs": runs}


def retrieval_results():
    def table(base):
        return {t: {"n": 10, "R@1": base * f, "R@5": min(1.0, 2 * base * f)}
                for t, f in (("single_hop", 1.0), ("two_hop_linked", 0.7), ("two_hop_hidden", 0.4), ("all", 0.8))}

    return {"n": 40, "recall": {"query": table(0.5), "bm25": table(0.9), "minilm": table(0.7)}}


def test_curve_series_groups_numeric_keys_by_kind(tmp_path):
    from clara.training.metrics import read_metrics

    series = curve_series(read_metrics(write_metrics(tmp_path / "metrics.jsonl"), kind=None))
    assert list(series) == ["loss", "lr", "reward", "R@5"]
    assert set(series["loss"]) == {"train", "eval"} and series["loss"]["eval"][0] == [5, 10, 15, 20]
    assert set(series["R@5"]) == {"single_hop", "all"} and series["R@5"]["all"][1] == [s / 30 for s in (5, 10, 15, 20)]


def test_training_curves_png(tmp_path):
    png = plot_training_curves(write_metrics(tmp_path / "run" / "metrics.jsonl"), tmp_path / "curves.png")
    height, width, _ = image_shape(png)
    assert width >= 800 and height >= 300  # 4 panels: 3 across, 2 down
    only = plot_training_curves(tmp_path / "run" / "metrics.jsonl", tmp_path / "loss.png", keys=["loss"])
    assert image_shape(only)[1] < width
    (tmp_path / "empty.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "note": "x"}) + "\n")
    with pytest.raises(DataError, match="no numeric metrics"):
        plot_training_curves(tmp_path / "empty.jsonl", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_cr_sweep_png(tmp_path):
    points = sweep_points(sweep_results(), "em")
    assert points["memory"] == [(4, 0.5), (16, 0.4), (64, 0.2)] and points["raw_text"] == [(4, 0.6)]
    height, width, _ = image_shape(plot_cr_sweep(sweep_results(), tmp_path / "sweep.png", metric="f1"))
    assert width >= 500 and height >= 300
    with pytest.raises(DataError, match="no metric 'bleu'"):
        plot_cr_sweep(sweep_results(), tmp_path / "x.png", metric="bleu")
    with pytest.raises(DataError, match="no 'runs'"):
        plot_cr_sweep({}, tmp_path / "x.png")


def test_retrieval_png_and_plot_cli(tmp_path, capsys):
    height, width, _ = image_shape(plot_retrieval(retrieval_results(), tmp_path / "r.png"))
    assert width >= 600 and height >= 500  # two panels (R@1, R@5) stacked
    one = image_shape(plot_retrieval(retrieval_results()["recall"], tmp_path / "r1.png", ks=[5]))
    assert one[0] < height
    with pytest.raises(DataError, match="no R@3"):
        plot_retrieval(retrieval_results(), tmp_path / "x.png", ks=[3])
    results = tmp_path / "retrieval.json"
    results.write_text(json.dumps(retrieval_results()))
    parser = argparse.ArgumentParser(prog="clara")
    lens_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plot", "retrieval", str(results), "--ks", "1", "--out", str(tmp_path / "cli.png")])
    assert args.func(args) == 0 and "plot written" in capsys.readouterr().out
    assert image_shape(tmp_path / "cli.png")[1] >= 600
    args = parser.parse_args(["plot", "sweep", str(tmp_path / "missing.json"), "--out", str(tmp_path / "s.png")])
    with pytest.raises(DataError, match="missing.json: cannot read"):
        args.func(args)


def test_settings_png_draws_one_bar_per_model_and_setting(tmp_path):
    release = {s: {"em": v} for s, v in [("memory", 0.3), ("wrong_memory", 0.0), ("raw_text", 0.8), ("closed_book", 0.03)]}
    live = {"memory": {"em": 0.05}, "wrong_memory": {"em": 0.0}}
    png = plot_settings({"release": release, "live": live}, tmp_path / "s.png")
    height, width, _ = image_shape(png)
    assert width >= 500 and height >= 300
    with pytest.raises(DataError, match="no settings"):
        plot_settings({"x": {"bleu": {"em": 1.0}}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
