"""`clara lens question|document|compare` (logit lens on memory states) and `clara plot curves|sweep|retrieval`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clara.cli.args import add_overwrite_argument, add_threads_argument, claim_out_file, csv_list, int_list, set_threads

FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def _model_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before or after the action (``clara lens --model X question …`` or ``… question --model X``)."""

    def d(value):
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--model", default=d(None), help="trained adapters: an adapters directory or a run directory "
                   "holding adapters/ (backbone, chunk_len and CR come from its clara_model.json)")  # fmt: skip
    p.add_argument("--backbone", default=d(None), help="backbone directory or .gguf; with --model it overrides the "
                   "recorded backbone, alone it runs the lens on the bare backbone (no adapters)")  # fmt: skip
    p.add_argument("--chunk-len", type=int, default=d(256), help="document tokens per chunk (only with --backbone alone)")
    p.add_argument("--cr", type=int, default=d(16), help="compression rate; m = chunk_len / cr memory slots "
                   "(only with --backbone alone)")  # fmt: skip
    p.add_argument("--top", type=int, default=d(None), help="top tokens per slot (default 5; 10 for compare)")
    add_threads_argument(p).default = d(0)  # not p.set_defaults: a parent's defaults override the parser's own
    p.add_argument("--out", default=d(None), help="also write the full result to this JSON file")
    p.add_argument("--overwrite", action="store_true", default=d(False),
                   help="replace files already at --out and --png (a directory there is always refused)")


def register(subparsers) -> None:
    register_lens(subparsers)
    register_plot(subparsers)


def register_lens(subparsers) -> None:
    parser = subparsers.add_parser(
        "lens", help="logit lens: the words each memory slot of a question or document projects to",
        description="Projects each memory slot's hidden state (query reasoner for a question, compressor for a "
        "document) through the model's final norm and LM head and shows the top tokens per slot: a table of "
        "layers x slots and, with --png, a heatmap. `compare` measures how many content words of each question's "
        "gold (bridge) document the query lens surfaces, against the raw question through the bare backbone.",
        formatter_class=FORMATTER,
    )
    _model_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _model_options(common, suppress=True)
    sub = parser.add_subparsers(dest="lens_command", metavar="ACTION", required=True)
    for action, adapter, what in (("question", "query", "a question (query reasoner)"),
                                  ("document", "compressor", "a document chunk (compressor)")):  # fmt: skip
        p = sub.add_parser(action, parents=[common], formatter_class=FORMATTER, help=f"lens of {what}",
                           description=f"Top tokens of each memory slot of {what}.")  # fmt: skip
        p.add_argument("text", metavar="TEXT", help=f"the {action} text (a document is cut to chunk_len tokens)")
        p.add_argument("--adapter", default=None, choices=["query", "compressor", "none"],
                       help=f"adapter whose states to read (default {adapter} with --model, none with --backbone alone)")
        p.add_argument("--layers", default="last", help="'last', 'all', or comma-separated layers: 0 = the "
                       "memory-token embeddings, i = output of block i-1, -1 = last (the encoder's output)")  # fmt: skip
        p.add_argument("--png", default=None, help="write a heatmap (rows = layers, cols = slots) to this PNG")
        p.set_defaults(func=run_lens, default_adapter=adapter)
    p = sub.add_parser("compare", parents=[common], formatter_class=FORMATTER,
                       help="query lens vs raw question: overlap with the gold document's words",
                       description="For each question: the union over memory slots of the top tokens at --layer, "
                       "as stemmed content words, intersected with the content words of the gold document (the "
                       "bridge document for two-hop questions) that are not stopwords and not in the question. "
                       "Reported per type for the query adapter and for the bare backbone at the same positions, "
                       "with two controls: the same count against another question's gold document of the same kind "
                       "(words every city's or company's document shares hit it alike) and of another kind; then "
                       "for the gold document's own memory (compressor) in the same view, the ceiling of the "
                       "comparison.")  # fmt: skip
    p.add_argument("--world", required=True, help="world directory (from `clara world --out DIR`)")
    p.add_argument("--split", default="test", type=csv_list, help="split(s), comma-separated")
    p.add_argument("--types", default="two_hop_linked,two_hop_hidden", type=csv_list, help="question types, comma-separated")
    p.add_argument("--limit", type=int, default=50, help="at most this many questions (0 = all)")
    p.add_argument("--layer", type=int, default=-1, help="layer to read (-1 = last)")
    p.add_argument("--adapter", default="query", choices=["query", "compressor"], help="adapter of the lens side")
    p.add_argument("--view", default="lens", choices=["lens", "read"],
                   help="lens: final norm + LM head (the logit lens); read: the states as the generator reads memory "
                   "- centred over the compared questions (per slot, on each side), ranked by cosine against the "
                   "input embeddings. Memory is spliced in as input embeddings, and raw last-layer memory states share "
                   "one dominant direction that the logit lens decodes to the same few words in every slot")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward")
    p.set_defaults(func=run_compare)


def load_lens_model(args: argparse.Namespace):
    """(model, has_adapters): trained adapters from --model, or the bare backbone from --backbone."""
    from clara.errors import ConfigError

    set_threads(args.threads)
    if args.model:
        from clara.model.loading import load_trained_model

        model = load_trained_model(args.model, args.backbone)
        return model, True
    if not args.backbone:
        raise ConfigError("give --model ADAPTERS_DIR (trained adapters) or --backbone DIR (the bare backbone)")
    from clara.config import ModelConfig
    from clara.model.clara_model import ClaraModel

    model = ClaraModel.from_config(ModelConfig(backbone=args.backbone, kind=backbone_kind(args.backbone),
                                               chunk_len=args.chunk_len, compression_rate=args.cr))  # fmt: skip
    model.eval()
    return model, False


def backbone_kind(path: str) -> str:
    """gguf for a .gguf file, tiny for a `clara backbone tiny` directory, else hf."""
    from clara.model.backbone import BACKBONE_INFO

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return "gguf"
    try:
        return "tiny" if json.loads((p / BACKBONE_INFO).read_text(encoding="utf-8")).get("kind") == "tiny" else "hf"
    except (OSError, ValueError):
        return "hf"


def run_lens(args: argparse.Namespace) -> int:
    from clara.errors import ConfigError
    from clara.eval.lens import format_lens_table, logit_lens
    from clara.fileio import FILE, atomic_write_json, claim_output

    claim_out_file(args)
    if args.png:
        claim_output(args.png, FILE, overwrite=args.overwrite)
    model, trained = load_lens_model(args)
    adapter = args.adapter or (args.default_adapter if trained else "none")
    if adapter != "none" and not trained:
        raise ConfigError(f"--adapter {adapter} needs trained adapters: pass --model ADAPTERS_DIR")
    res = logit_lens(model, args.text, None if adapter == "none" else adapter, args.layers, args.top or 5)
    print(f"logit lens ({adapter}) of {args.lens_command}: {args.text[:80]!r}; {model.num_mem} slots, "
          f"layers {res.layers} of 0..{res.num_blocks}")  # fmt: skip
    print(format_lens_table(res))
    if args.png:
        from clara.eval.plots import plot_lens_heatmap

        plot_lens_heatmap(res, args.png)
        print(f"heatmap written to {args.png}")
    if args.out:
        atomic_write_json(args.out, res.to_json())
        print(f"results written to {args.out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from clara.errors import ConfigError
    from clara.eval.lens import format_overlap_table, lens_overlap
    from clara.eval.retrieval import load_eval_records
    from clara.fileio import atomic_write_json
    from clara.world import document_kinds

    claim_out_file(args)
    model, trained = load_lens_model(args)
    if not trained:
        raise ConfigError("lens compare needs trained adapters: pass --model ADAPTERS_DIR")
    records = load_eval_records(world=args.world, splits=args.split, types=args.types, limit=args.limit or None)
    stats = lens_overlap(model, records, adapter=args.adapter, layer=args.layer, top=args.top or 10,
                         batch_size=args.batch_size, view=args.view, kinds=document_kinds(args.world))  # fmt: skip
    stats.update({"world": args.world, "splits": args.split, "types": args.types, "model": args.model})
    print(f"lens compare: {len(records)} questions, top {stats['top']} per slot x {model.num_mem} slots, "
          f"layer {args.layer}, view {args.view}")  # fmt: skip
    print(format_overlap_table(stats))
    print(json.dumps({"by_type": stats["by_type"]}, indent=2))
    if args.out:
        atomic_write_json(args.out, stats)
        print(f"results written to {args.out}")
    return 0


# ---------------------------------------------------------------------------- clara plot


def register_plot(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="PNG plots: training curves, CR sweep, retrieval vs baselines")
    sub = parser.add_subparsers(dest="plot_command", metavar="KIND", required=True)
    p = sub.add_parser("curves", formatter_class=FORMATTER, help="one panel per metric key of a metrics.jsonl, x = step")
    p.add_argument("metrics", metavar="METRICS_JSONL", help="metrics.jsonl written by a training stage")
    p.add_argument("--keys", default="", type=csv_list, help="metric keys to plot, comma-separated (empty = all numeric)")
    p.add_argument("--out", required=True, help="PNG to write")
    add_overwrite_argument(p, "a file")
    p.set_defaults(func=run_plot)
    p = sub.add_parser("sweep", formatter_class=FORMATTER, help="metric vs compression rate, per setting")
    p.add_argument("results", metavar="RESULTS_JSON", help="JSON from `clara eval compression --out`")
    p.add_argument("--metric", default="em", help="score to plot: em, f1, cover_em, raw_cover_em")
    p.add_argument("--out", required=True, help="PNG to write")
    add_overwrite_argument(p, "a file")
    p.set_defaults(func=run_plot)
    p = sub.add_parser("retrieval", formatter_class=FORMATTER, help="Recall@k per question type, per retriever")
    p.add_argument("results", metavar="RESULTS_JSON", help="JSON from `clara eval retrieval --out`")
    p.add_argument("--ks", default="", type=int_list, help="k values, comma-separated (empty = all in the results)")
    p.add_argument("--out", required=True, help="PNG to write")
    add_overwrite_argument(p, "a file")
    p.set_defaults(func=run_plot)


def _read_json(path: str):
    from clara.errors import DataError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def run_plot(args: argparse.Namespace) -> int:
    from clara.errors import DataError
    from clara.eval import plots
    from clara.training.curves import plot_training_curves

    claim_out_file(args)
    if args.plot_command == "curves":
        if not Path(args.metrics).is_file():
            raise DataError(f"{args.metrics}: no such metrics file")
        path = plot_training_curves(args.metrics, args.out, keys=args.keys or None)
    elif args.plot_command == "sweep":
        path = plots.plot_cr_sweep(_read_json(args.results), args.out, metric=args.metric)
    else:
        path = plots.plot_retrieval(_read_json(args.results), args.out, ks=args.ks or None)
    print(f"plot written to {path}")
    return 0
