"""A training mixture of pretraining records, reproducible from its command (``clara data mix``).

    n = mix(["cloze.jsonl:qa:all:wiki-cloze", "cloze.jsonl:paraphrase:1500:wiki-cloze",
             "world.jsonl:qa:all:world"], "mix.jsonl", seed=0)

Each part is ``FILE:KIND:N[:SOURCE]``. KIND picks records by their id's suffix (``…:qa``,
``…:paraphrase``, ``…:continuation``, as `clara pretrain synth` names them), else by ``data_type``
(``qa``, ``paraphrase``; ``continuation`` only by suffix); ``all`` takes every record. N is a count,
drawn without replacement, or ``all``. SOURCE is written as each record's ``source`` (default: the
file's stem), so `clara eval compression --data` can report per source. The parts are joined in
order and shuffled with ``seed``; every record is validated as a pretraining record first (a bad one
is one ``file:line: field: problem``), and the output is written atomically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clara.data.jsonl import iter_json_lines, write_jsonl
from clara.data.records import PretrainRecord
from clara.errors import ConfigError

KINDS = ("qa", "paraphrase", "continuation", "all")


@dataclass(frozen=True)
class Part:
    path: Path
    kind: str
    count: int | None  # None: all
    source: str

    @classmethod
    def parse(cls, text: str) -> "Part":
        fields = text.rsplit(":", 3) if text.count(":") >= 3 else text.rsplit(":", 2)
        if len(fields) < 3:
            raise ConfigError(f"{text!r}: a mixture part is FILE:KIND:N[:SOURCE] (e.g. cloze.jsonl:qa:all)")
        if text.count(":") >= 3 and fields[1] not in KINDS:  # a FILE with ':' in it and no SOURCE
            fields = text.rsplit(":", 2)
        path, kind, n, *source = fields
        if kind not in KINDS:
            raise ConfigError(f"{text!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if n != "all" and not (n.isdigit() and int(n) > 0):
            raise ConfigError(f"{text!r}: N must be a positive count or 'all', got {n!r}")
        return cls(Path(path), kind, None if n == "all" else int(n), source[0] if source else Path(path).stem)


def kind_of(obj: dict) -> str:
    suffix = str(obj.get("id", "")).rpartition(":")[2]
    return suffix if suffix in ("qa", "paraphrase", "continuation") else str(obj.get("data_type"))


def read_part(part: Part) -> list[dict]:
    if not part.path.is_file():
        raise ConfigError(f"{part.path}: no such pretraining records file")
    out = []
    for where, obj in iter_json_lines(part.path):
        PretrainRecord.from_json(obj, where)
        if part.kind in ("all", kind_of(obj)):
            obj["source"] = obj.get("source") or part.source
            out.append(obj)
    return out


def mix(parts: Sequence[str], out: str | Path, *, seed: int = 0) -> dict[str, int]:
    """Write the mixture to ``out``; returns the records taken per part."""
    if not parts:
        raise ConfigError("no mixture parts; give FILE:KIND:N[:SOURCE] at least once")
    rng = random.Random(seed)
    records, counts = [], {}
    for text in parts:
        part = Part.parse(text)
        found = read_part(part)
        if part.count is not None and part.count > len(found):
            raise ConfigError(f"{text!r}: asks for {part.count} {part.kind} records, {part.path} has {len(found)}")
        taken = found if part.count is None else rng.sample(found, part.count)
        counts[text] = len(taken)
        records += taken
    rng.shuffle(records)
    write_jsonl(out, records)
    return counts
