"""A quiet console: commands print progress and summaries, not library noise (``--verbose`` shows it)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# what the libraries printed before: DeepSpeed's accelerator guess, faiss's loader trying an
# instruction set it lacks, transformers' deprecation of is_gradient_checkpointing (via peft)
NOISE = re.compile(r"WARNING|Warning|warn|ModuleNotFoundError|Traceback|deprecated|Setting accelerator")


def clara(*argv: str, cwd=REPO) -> str:
    r = subprocess.run([sys.executable, "-m", "clara.cli", *argv], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory, tiny_backbone):
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    out = tmp_path_factory.mktemp("run") / "adapters"
    ClaraModel.from_config(cfg).save_adapters(out)
    return out


def test_backbone_world_and_index_build_print_no_warnings(tmp_path, tiny_adapters):
    transcript = [
        clara("backbone", "tiny", "--out", str(tmp_path / "tiny")),
        clara("world", "--seed", "0", "--entities", "20", "--out", str(tmp_path / "world")),
        clara("index", "build", "--corpus", str(tmp_path / "world" / "documents.jsonl"), "--model",
              str(tiny_adapters), "--out", str(tmp_path / "bank")),
    ]
    for text in transcript:
        assert not NOISE.search(text), text
    assert "tiny backbone written" in transcript[0]
    assert '"documents": 20' in transcript[2]  # the summary stays (tiny chunk_len 32: world documents are split)


def test_verbose_shows_the_library_lines(tmp_path, tiny_adapters):
    # DeepSpeed is imported (by accelerate) when transformers saves a model
    assert "Setting accelerator to CPU" in clara("backbone", "tiny", "--out", str(tmp_path / "tiny"), "--verbose")
    text = clara("index", "build", "--corpus", str(write_docs(tmp_path)), "--model", str(tiny_adapters),
                 "--out", str(tmp_path / "bank"), "--verbose")
    assert "faiss.loader" in text


def write_docs(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "title": "A", "text": "Alpha town."}\n{"id": "b", "title": "B", "text": "Beta."}\n')
    return path
