"""Build the offline English corpus the shipped SAE was trained on (run once by a maintainer, not at run time).

Sources are Debian packages that ship large English texts; install them first::

    apt-get install -y dict-gcide python3.11-doc debian-reference-en fortunes
    python -m dsg_lens.data.build_sae_corpus /tmp/sae_corpus.jsonl

Writes JSONL records ``{"text": ..., "source": ...}`` (documents of ~``doc_chars`` characters, light markup
removed). The WordNet package is left out on purpose (the forget/retain benchmark is built from it), though GCIDE
carries some WordNet-derived entries. Missing sources are skipped (0 characters in the summary); at least one must
exist.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
PYTHON_DOC = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
FORTUNES = Path("/usr/share/games/fortunes")

_SOURCE_TAG = re.compile(r"\[(?:[^\]\n]*Webster|PJC|WordNet[^\]\n]*|Century[^\]\n]*|[A-Z]{2,5})\]")
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
_RST_MARKUP = re.compile(r"^\s*(?:\.\. |[=\-~^*#+`:]{3,}\s*$)")
_RST_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_SPACES = re.compile(r"\s+")


def _paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs with whitespace collapsed."""
    for block in re.split(r"\n\s*\n", text):
        paragraph = _SPACES.sub(" ", block).strip()
        if paragraph:
            yield paragraph


def gcide_entries(path: Path = GCIDE) -> Iterator[str]:
    """GCIDE (Webster 1913 + additions) dictionary entries, source tags and pronunciations removed."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    for entry in re.split(r"\n(?=\S)", text):
        cleaned = _PRONUNCIATION.sub("", _SOURCE_TAG.sub("", entry)).replace("{", "").replace("}", "")
        cleaned = " ".join(_paragraphs(cleaned))
        if len(cleaned) > 40 and not cleaned.startswith("00-database"):
            yield cleaned


def python_doc_paragraphs(root: Path = PYTHON_DOC) -> Iterator[str]:
    """Prose paragraphs of the Python 3.11 documentation sources (reST directives and rules dropped)."""
    for path in sorted(root.rglob("*.rst.txt")):
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if not _RST_MARKUP.match(ln)]
        for paragraph in _paragraphs("\n".join(lines)):
            yield _RST_ROLE.sub(r"\1", paragraph)


def debian_reference_paragraphs(path: Path = DEBIAN_REFERENCE) -> Iterator[str]:
    """Paragraphs of the Debian Reference (English plain-text edition)."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        yield from _paragraphs(f.read())


def fortune_cookies(root: Path = FORTUNES) -> Iterator[str]:
    """Fortune cookies (``%``-separated) of every plain fortune file."""
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.suffix):
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            cleaned = _SPACES.sub(" ", cookie).strip()
            if cleaned:
                yield cleaned


SOURCES: dict[str, tuple[Path, Callable[[Path], Iterable[str]]]] = {
    "gcide": (GCIDE, gcide_entries),
    "python-doc": (PYTHON_DOC, python_doc_paragraphs),
    "debian-reference": (DEBIAN_REFERENCE, debian_reference_paragraphs),
    "fortunes": (FORTUNES, fortune_cookies),
}


def documents(pieces: Iterable[str], doc_chars: int) -> Iterator[str]:
    """Join consecutive pieces (newline-separated) into documents of at least ``doc_chars`` characters."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece) + 1
        if size >= doc_chars:
            yield "\n".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield "\n".join(buffer)


def build_corpus(out: Path, *, doc_chars: int = 2000, max_chars_per_source: int | None = None) -> dict[str, int]:
    """Write the corpus to ``out`` (JSONL); returns the characters written per source (0 = not installed)."""
    summary: dict[str, int] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for source, (path, read) in SOURCES.items():
            written = 0
            if path.exists():
                for doc in documents(read(path), doc_chars):
                    f.write(json.dumps({"text": doc, "source": source}) + "\n")
                    written += len(doc)
                    if max_chars_per_source is not None and written >= max_chars_per_source:
                        break
            summary[source] = written
    if not any(summary.values()):
        raise ValueError(f"no corpus source is installed: apt-get install -y dict-gcide python3.11-doc "
                         f"debian-reference-en fortunes (looked for {[str(p) for p, _ in SOURCES.values()]})")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output JSONL path")
    parser.add_argument("--doc-chars", type=int, default=2000, help="minimum characters per document")
    parser.add_argument("--max-chars-per-source", type=int, default=None, help="cap per source (default: all)")
    args = parser.parse_args(argv)
    summary = build_corpus(args.out, doc_chars=args.doc_chars, max_chars_per_source=args.max_chars_per_source)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
