"""One metrics logger: JSON lines always, TensorBoard when asked and installed.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": 12, "kind": "train",
"loss": ...}``). A resumed run first drops every line after the step it resumes from, so the
file never holds a step twice and reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from clara.fileio import atomic_write_text

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    # json.dumps would write NaN/Infinity, which strict JSON readers reject.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Append-only JSONL metrics file plus optional TensorBoard scalars."""

    def __init__(self, path: str | os.PathLike, tensorboard_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("train.tensorboard is on but tensorboard is not installed; logging JSONL only "
                            "(pip install tensorboard)")
            else:
                self._tb = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> int:
        """Drop records with ``step > step`` (left by a run that died after its last checkpoint)."""
        if not self.path.exists():
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                dropped += 1
                continue
            if record.get("step", 0) > step:
                dropped += 1
            else:
                keep.append(line)
        if dropped:
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
            log.info("%s: dropped %d records after step %d (resuming)", self.path, dropped, step)
        return dropped

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self._tb is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike, kind: str | None = "train") -> list[dict[str, Any]]:
    """All records of ``kind`` (None = every record) from a metrics.jsonl file."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
