"""MediaWiki dumps: streamed page reading and wiki-markup stripping to plain prose.

    for page in iter_mediawiki_pages("enwiki-...-pages-articles.xml.bz2"):
        text = strip_wiki_markup(page.text)

Pages are read with ``xml.etree.ElementTree.iterparse`` and cleared as they go, so memory
stays flat on a full dump. Tags match without their XML namespace (the export schema
version changes the namespace URI). Redirects and pages outside the article namespace
are skipped. Stripping is regex- and scanner-based, not a full wikitext parser: it keeps
the prose of articles and drops templates, tables, references, files and categories.
"""

from __future__ import annotations

import bz2
import gzip
import html
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clara.errors import DataError

log = logging.getLogger(__name__)

ARTICLE_NAMESPACE = "0"
# Sections whose bodies are link lists and citations, not prose.
DROP_SECTIONS = frozenset((
    "references", "notes", "footnotes", "citations", "sources", "bibliography", "further reading",
    "see also", "external links", "notes and references", "references and notes", "works cited",
))  # fmt: skip
# Link namespaces whose whole link is dropped (media and page metadata, not prose).
DROP_LINK_PREFIXES = ("file", "image", "media", "category")
# Tags whose content is never prose.
_DROP_BLOCKS = "ref|gallery|math|chem|timeline|score|syntaxhighlight|source|pre|imagemap|graph|mapframe|templatedata"

_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_SELF_CLOSING_BLOCK = re.compile(rf"<(?:{_DROP_BLOCKS})\b[^>]*/\s*>", re.I)
_BLOCK = re.compile(rf"<({_DROP_BLOCKS})\b[^>]*>.*?</\1\s*>", re.I | re.S)
_BRACE_TOKEN = re.compile(r"\{\{|\}\}|\{\||\|\}")
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_INTERLANGUAGE = re.compile(r"^:?[a-z]{2,3}(?:-[a-z]+)*:", re.I)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:|//)[^\s\]]*(?:\s+([^\]]*))?\]")
_HEADING = re.compile(r"^\s*(={1,6})\s*(.*?)\s*\1\s*$")
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_QUOTES = re.compile(r"'{2,5}")
_MAGIC = re.compile(r"__[A-Z]+__")
_LIST_MARK = re.compile(r"^[*#:;]+\s*")
_SPACES = re.compile(r"[ \t\u00a0]+")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACE_PUNCT = re.compile(r"\s+([,.;:!?)])")


@dataclass(frozen=True)
class WikiPage:
    id: str
    title: str
    text: str  # raw wikitext


def _remove_balanced(text: str) -> str:
    """Drop templates ``{{…}}`` and tables ``{|…|}``, nested in any order.

    A table opens only at the start of a line (as in MediaWiki); ``|}`` closes a table only
    when a table is innermost, so ``{{foo|}}`` is still read as a template. An opener that is
    never closed is dropped with the rest of its paragraph rather than the rest of the page.
    """
    out, stack, pos, start = [], [], 0, 0
    while True:
        m = _BRACE_TOKEN.search(text, pos)
        if m is None:
            break
        tok, i = m.group(), m.start()
        if tok == "{{" or (tok == "{|" and (i == 0 or text[:i].rstrip(" \t").endswith("\n") or not text[:i].strip())):
            if not stack:
                out.append(text[start:i])
            stack.append("t" if tok == "{{" else "table")
            pos = m.end()
        elif stack and ((tok == "}}" and stack[-1] == "t") or (tok == "|}" and stack[-1] == "table")):
            stack.pop()
            pos = m.end()
            if not stack:
                start = pos
        else:
            pos = i + 1  # not a structural token here (e.g. "|}" inside a template)
    if stack:  # unclosed: keep what follows the opener's paragraph
        rest = text[start:]
        para_end = rest.find("\n\n")
        start = len(text) if para_end < 0 else start + para_end
    out.append(text[start:])
    return "".join(out)


def _link_text(match: re.Match) -> str:
    inner = match.group(1)
    target, bar, label = inner.partition("|")
    prefix = target.strip().lstrip(":").split(":", 1)[0].strip().lower() if ":" in target else ""
    if prefix in DROP_LINK_PREFIXES:
        return ""
    if not bar and _INTERLANGUAGE.match(target.strip()):
        return ""
    if bar:
        label = label.rsplit("|", 1)[-1].strip()
        if label:
            return label
        # the "pipe trick": [[Paris, Texas|]] shows "Paris"
        target = re.sub(r"\s*\(.*\)$", "", target.split(":", 1)[-1]).split(",")[0]
    return target.strip().lstrip(":").split("#", 1)[0] or target.split("#", 1)[-1]


def _replace_links(text: str) -> str:
    # Innermost first, so a file caption's own links are resolved before the file is dropped.
    for _ in range(20):
        new = _INNER_LINK.sub(_link_text, text)
        if new == text:
            break
        text = new
    return text


def _clean_lines(text: str) -> str:
    lines, dropping = [], False
    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading:
            title = heading.group(2).strip()
            dropping = title.lower() in DROP_SECTIONS
            if not dropping and title:
                lines.extend(["", title, ""])  # a heading is its own paragraph
            continue
        if dropping:
            continue
        stripped = line.strip()
        if stripped.startswith("----") or stripped.startswith("|") or stripped.startswith("!"):
            continue  # rules and stray table rows
        lines.append(_LIST_MARK.sub("", stripped))
    return "\n".join(lines)


def strip_wiki_markup(text: str) -> str:
    """Plain prose from wikitext: no templates, tables, refs, files, categories, tags or quotes."""
    text = html.unescape(text)  # entities that survived XML decoding (&nbsp;, &ndash;)
    text = _COMMENT.sub("", text)
    text = _SELF_CLOSING_BLOCK.sub("", text)
    text = _BLOCK.sub("", text)
    text = _remove_balanced(text)
    text = _replace_links(text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _MAGIC.sub("", text)
    text = _clean_lines(text)
    text = _EMPTY_PARENS.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_PUNCT.sub(r"\1", text)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# ---------------------------------------------------------------------------- dump reading


def open_maybe_compressed(path: Path):
    """A binary file object, decompressing ``.bz2`` / ``.gz`` by their magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(3)
    if magic == b"BZh":
        return bz2.open(path, "rb")
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def _page_text(page: ET.Element) -> str:
    text = ""
    for child in page:
        if _local(child.tag) == "revision":
            found = _child_text(child, "text")
            text = found if found is not None else text  # full-history dumps: the last revision wins
    return text


def _is_article(page: ET.Element, title: str, namespaces: set[str]) -> bool:
    ns = _child_text(page, "ns")
    if ns is not None:
        return ns.strip() == ARTICLE_NAMESPACE
    # old dumps carry no <ns>: a title prefixed by a known namespace name is not an article
    prefix, sep, _ = title.partition(":")
    return not (sep and prefix in namespaces)


def _is_redirect(page: ET.Element, text: str) -> bool:
    return any(_local(c.tag) == "redirect" for c in page) or text.lstrip()[:9].upper() == "#REDIRECT"


def iter_mediawiki_pages(path: str | Path, counts: dict | None = None) -> Iterator[WikiPage]:
    """Article pages of a MediaWiki XML dump (plain, .bz2 or .gz), streamed.

    ``counts`` (if given) is filled with ``pages``, ``redirects``, ``other_namespace``.
    """
    path = Path(path)
    counts = counts if counts is not None else {}
    for key in ("pages", "redirects", "other_namespace"):
        counts.setdefault(key, 0)
    namespaces: set[str] = set()
    root = None
    try:
        with open_maybe_compressed(path) as f:
            for event, elem in ET.iterparse(f, events=("start", "end")):
                name = _local(elem.tag)
                if event == "start":
                    root = elem if root is None else root
                    continue
                if name == "namespace" and elem.text:
                    namespaces.add(elem.text.strip())
                if name != "page":
                    continue
                counts["pages"] += 1
                page = _read_page(elem, namespaces, counts)
                elem.clear()
                if root is not None:
                    root.clear()  # drop finished pages so memory stays flat
                if page is not None:
                    yield page
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(f"{path}:{line}: xml: malformed MediaWiki dump at column {col} ({e.msg if hasattr(e, 'msg') else e}); "
                        "check that the file is complete") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the dump ({e}); check that the file is complete") from None
    if root is None or _local(root.tag) != "mediawiki":
        raise DataError(f"{path}: not a MediaWiki XML dump (root element is not <mediawiki>)")


def _read_page(elem: ET.Element, namespaces: set[str], counts: dict) -> WikiPage | None:
    title = (_child_text(elem, "title") or "").strip()
    page_id = (_child_text(elem, "id") or "").strip() or title
    if not _is_article(elem, title, namespaces):
        counts["other_namespace"] += 1
        return None
    text = _page_text(elem)
    if _is_redirect(elem, text):
        counts["redirects"] += 1
        return None
    return WikiPage(id=page_id, title=title, text=text)
