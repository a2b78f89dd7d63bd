"""Corpus ingestion: JSONL documents, plain-text folders and MediaWiki dumps → passages.

    summary = ingest("enwiki.xml.bz2", "data/wiki.jsonl", tokenizer="out/backbones/smollm2", chunk_len=256)

Every source document is cut into passages of at most ``chunk_len`` tokens of the backbone's
tokenizer, counted on ``title + "\\n" + text`` (:meth:`Document.as_text`, what later stages
compress), cut at sentence ends where one falls past the first quarter of the budget, else at a
word boundary. Passage ids are ``{source_id}#{chunk_no}``, so re-ingesting the same source
with the same tokenizer gives the same ids. The output is written atomically.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from clara.errors import ConfigError, DataError
from clara.fileio import atomic_write_json
from clara.data.jsonl import iter_records, write_jsonl
from clara.data.records import Document, RecordKind

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "text", "mediawiki")
TEXT_SUFFIXES = (".txt", ".text", ".md")
MIN_CHUNK_TOKENS = 8  # a shorter tail is noise (a stray heading), not a passage
# A sentence ends at . ! ? (optionally closing quote/bracket) before a space; a line break
# always ends one (headings, list items, paragraphs).
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")


@dataclass
class IngestSummary:
    source: str
    format: str
    output: str = ""
    documents: int = 0  # source documents that gave at least one passage
    skipped: int = 0  # empty after cleaning, redirects, other namespaces
    chunks: int = 0
    tokens: int = 0
    max_chunk_tokens: int = 0
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def line(self) -> str:
        mean = self.tokens / self.chunks if self.chunks else 0.0
        return (f"{self.documents} documents -> {self.chunks} passages, {self.tokens} tokens "
                f"(mean {mean:.0f}, max {self.max_chunk_tokens}/passage), {self.skipped} skipped, "
                f"{self.seconds:.1f}s")  # fmt: skip


# ---------------------------------------------------------------------------- sources


def detect_format(src: Path) -> str:
    """``text`` for a folder, ``mediawiki`` for XML (possibly compressed), else ``jsonl``."""
    from clara.data.wikitext import open_maybe_compressed

    if src.is_dir():
        return "text"
    if not src.is_file():
        raise ConfigError(f"{src}: no such file or folder; give a JSONL file, a text folder or a MediaWiki dump")
    with open_maybe_compressed(src) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return "mediawiki"
    if head.startswith(b"{"):
        return "jsonl"
    raise ConfigError(f"{src}: cannot tell the format (neither XML nor JSON lines); pass --format")


def iter_jsonl_documents(src: Path) -> Iterator[Document]:
    """Documents ``{id, title, text}`` or ``{id, contents}``; a bad line is an error naming it."""
    yield from iter_records(src, RecordKind.DOCUMENTS)


def iter_text_folder(src: Path) -> Iterator[Document]:
    """One document per text file (sorted); id is the relative path, title the file name."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"{src}: no text files ({', '.join(TEXT_SUFFIXES)}) in this folder")
    for path in files:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert it or remove it") from None
        rel = path.relative_to(src).with_suffix("").as_posix()
        title = re.sub(r"[_-]+", " ", path.stem).strip()
        yield Document(text=text, title=title, id=rel)


def iter_mediawiki_documents(src: Path, counts: dict) -> Iterator[Document]:
    from clara.data.wikitext import iter_mediawiki_pages, strip_wiki_markup

    for page in iter_mediawiki_pages(src, counts):
        yield Document(text=strip_wiki_markup(page.text), title=page.title, id=page.id)


def iter_source(src: Path, fmt: str, counts: dict) -> Iterator[Document]:
    if fmt == "jsonl":
        return iter_jsonl_documents(src)
    if fmt == "text":
        if not src.is_dir():
            raise ConfigError(f"{src}: --format text needs a folder of text files")
        return iter_text_folder(src)
    if fmt == "mediawiki":
        return iter_mediawiki_documents(src, counts)
    raise ConfigError(f"--format {fmt}: unknown; use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------- chunking


def load_tokenizer(path: str | Path) -> Any:
    """The backbone's tokenizer, offline."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such tokenizer folder; give a backbone folder (clara backbone tiny|convert --out DIR)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot load a tokenizer from this folder ({str(e).splitlines()[0]})") from None


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut_points(text: str, starts: list[int]) -> set[int]:
    """Token indices at which a sentence or line begins (good places to cut)."""
    cuts = set()
    for m in _SENTENCE_END.finditer(text):
        i = bisect.bisect_left(starts, m.end())
        if 0 < i < len(starts):
            cuts.add(i)
    return cuts


def _word_starts(text: str, starts: list[int]) -> list[bool]:
    # A token that begins at a space (or after one) starts a word; cutting there never splits a word.
    return [s == 0 or text[s - 1].isspace() or text[s].isspace() for s in starts]


def _spans(n: int, budget: int, cuts: set[int], word_starts: list[bool]) -> Iterator[tuple[int, int]]:
    """Token ranges [a, b) of at most ``budget`` tokens; prefer sentence ends, then word starts."""
    a = 0
    while a < n:
        b = min(a + budget, n)
        if b < n:
            # a sentence end anywhere past the first quarter beats a fuller passage cut mid-sentence
            sentence = next((i for i in range(b, a + max(1, budget // 4) - 1, -1) if i in cuts), None)
            word = next((i for i in range(b, a + max(1, budget // 2) - 1, -1) if word_starts[i]), None)
            b = sentence or word or b
        yield a, b
        a = b


def chunk_document(doc: Document, tokenizer: Any, chunk_len: int, min_tokens: int = MIN_CHUNK_TOKENS) -> list[Document]:
    """Passages of ``doc``, each with ``len(tokens(title + "\\n" + text)) <= chunk_len``; a last piece of
    fewer than ``min_tokens`` tokens is dropped (ingest: a stray heading), where ``min_tokens=1`` keeps all."""
    text = doc.text.strip()
    title_tokens = count_tokens(tokenizer, doc.title + "\n") if doc.title else 0
    budget = chunk_len - title_tokens
    if budget < MIN_CHUNK_TOKENS:
        raise DataError(f"document {doc.id!r}: its title alone takes {title_tokens} of chunk_len={chunk_len} tokens; "
                        "raise --chunk-len")  # fmt: skip
    if not text:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in enc["offset_mapping"]]
    ends = [e for _, e in enc["offset_mapping"]]
    cuts, words = _cut_points(text, starts), _word_starts(text, starts)
    out = []
    for a, b in _spans(len(starts), budget, cuts, words):
        if b - a < min_tokens and out:
            continue
        piece = text[starts[a]: ends[b - 1]].strip()
        # Re-tokenising a slice can merge differently at its edges; shrink until it fits.
        while b > a + 1 and count_tokens(tokenizer, _as_text(doc.title, piece)) > chunk_len:
            b -= 1
            piece = text[starts[a]: ends[b - 1]].strip()
        if piece:
            out.append(Document(text=piece, title=doc.title, id=f"{doc.id}#{len(out)}"))
    return out


def _as_text(title: str, text: str) -> str:
    return Document(text=text, title=title).as_text()


# ---------------------------------------------------------------------------- ingest


def ingest(
    src: str | Path, out: str | Path, *, tokenizer: str | Path | Any, chunk_len: int = 256, fmt: str = "auto",
    limit: int | None = None,
) -> IngestSummary:
    """Read ``src``, chunk every document, write passages JSONL to ``out`` (atomically).

    Writes ``out`` + ``.summary.json`` beside it. ``limit`` stops after that many source
    documents (for trying a large dump).
    """
    src, out = Path(src), Path(out)
    if chunk_len < 2 * MIN_CHUNK_TOKENS:
        raise ConfigError(f"--chunk-len {chunk_len}: too small; use at least {2 * MIN_CHUNK_TOKENS}")
    fmt = detect_format(src) if fmt == "auto" else fmt
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    summary = IngestSummary(source=str(src), format=fmt, output=str(out))
    counts: dict = {}
    start = time.perf_counter()

    def passages() -> Iterator[Document]:
        bar = tqdm(iter_source(src, fmt, counts), desc=f"ingest {src.name}", unit="doc", disable=None)
        for i, doc in enumerate(bar):
            if limit is not None and i >= limit:
                break
            chunks = chunk_document(doc, tok, chunk_len)
            if not chunks:
                summary.skipped += 1
                continue
            summary.documents += 1
            for chunk in chunks:
                n = count_tokens(tok, chunk.as_text())
                summary.chunks += 1
                summary.tokens += n
                summary.max_chunk_tokens = max(summary.max_chunk_tokens, n)
                yield chunk
            bar.set_postfix(passages=summary.chunks)

    write_jsonl(out, passages())
    summary.seconds = time.perf_counter() - start
    summary.details = {k: v for k, v in counts.items()}
    summary.skipped += counts.get("redirects", 0) + counts.get("other_namespace", 0)
    atomic_write_json(summary_path(out), {**asdict(summary), "chunk_len": chunk_len})
    log.info("ingested %s: %s", src, summary.line())
    return summary


def summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


# ---------------------------------------------------------------------------- held-out split


def source_id(passage_id: str) -> str:
    """The source document of a passage id ``SRC#n`` (the id itself when it has no ``#n``)."""
    src, sep, n = passage_id.rpartition("#")
    return src if sep and n.isdigit() else passage_id


def split_by_source(
    src: str | Path, train_out: str | Path, heldout_out: str | Path, *, titles: Sequence[str] = (),
    fraction: float = 0.0, seed: int = 0,
) -> dict:
    """Hold out whole source documents: every passage of a held-out article goes to ``heldout_out``.

    Held out are the articles titled in ``titles`` (each must exist), plus a stable ``fraction`` of the
    other articles drawn by a hash of ``seed`` and the source id. Both outputs are written atomically;
    returns counts and the held-out titles.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--heldout-fraction {fraction}: must be in [0, 1)")
    docs = [d for d in iter_records(src, RecordKind.DOCUMENTS)]
    known = {d.title for d in docs}
    missing = [t for t in titles if t not in known]
    if missing:
        raise ConfigError(f"{src}: no passage has the title {missing[0]!r}; titles are matched exactly")
    want = set(titles)

    def held(d: Document) -> bool:
        if d.title in want:
            return True
        digest = hashlib.sha256(f"{seed}/{source_id(d.id)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    heldout = [d for d in docs if held(d)]
    train = [d for d in docs if not held(d)]
    write_jsonl(train_out, train)
    write_jsonl(heldout_out, heldout)
    return {"train_passages": len(train), "heldout_passages": len(heldout),
            "train_sources": len({source_id(d.id) for d in train}),
            "heldout_sources": len({source_id(d.id) for d in heldout}),
            "heldout_titles": sorted({d.title for d in heldout})}  # fmt: skip
