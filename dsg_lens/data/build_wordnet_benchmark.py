"""Generate the embedded forget/retain benchmark and corpora from WordNet 3.0 (run once; output is committed).

Reads the WordNet 3.0 database files directly (Debian package ``wordnet-base``: ``data.noun`` and
``cntlist.rev`` under ``/usr/share/wordnet``). Nothing here runs at library run time.

- Questions: one per noun synset whose best single-word lemma is common enough (sense tag count from
  ``cntlist.rev``, then how often the word appears in other glosses); "Which word means "<definition>"?" with
  4 choices: the answer and 3 distractors drawn from the answer words of the same domain (never a lemma of the
  synset, of its hypernyms or of its hyponyms). Cloze fields: ``context`` "<Definition> is called",
  ``candidates`` " a/an <word>" aligned with ``choices``, ``neutral_context`` "It is called".
- Corpora: dictionary-style entries "<word>: <gloss>" of synsets of the same domains that are DISJOINT from the
  question synsets, grouped into paragraphs.

Usage (from the repository root)::

    sudo apt-get install wordnet-base   # once
    python -m dsg_lens.data.build_wordnet_benchmark [--wordnet-dir /usr/share/wordnet] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FORGET_DOMAIN = "noun.animal"
RETAIN_DOMAINS = ("noun.artifact", "noun.body", "noun.food", "noun.location", "noun.plant", "noun.substance")
N_FORGET_QUESTIONS = 700
N_RETAIN_QUESTIONS_PER_DOMAIN = 220
N_CORPUS_ENTRIES = 3000
ENTRIES_PER_PARAGRAPH = 6
SEED = 0
NEUTRAL_CONTEXT = "It is called"

# lexicographer file numbers of WordNet 3.0 noun domains (lexnames(5WN))
_LEXNAMES = {5: "noun.animal", 6: "noun.artifact", 8: "noun.body", 13: "noun.food", 15: "noun.location",
             20: "noun.plant", 27: "noun.substance"}
_WORD = re.compile(r"[a-z]{3,}")

WORDNET_LICENSE = """WordNet Release 3.0. This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license. By obtaining, using and/or copying this software and database,
you agree that you have read, understood, and will comply with these terms and conditions.: Permission to use,
copy, modify and distribute this software and database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with the following copyright notice and statements,
including the disclaimer, and that the same appear on ALL copies of the software, database and documentation,
including modifications that you make for internal use or for distribution. WordNet 3.0 Copyright 2006 by
Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY
MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR
THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS,
COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software and/or database. Title to copyright in this
software, database and any associated documentation shall at all times remain with Princeton University and
LICENSEE agrees to preserve same.
"""


@dataclass(frozen=True)
class Synset:
    offset: str
    domain: str
    lemmas: tuple[str, ...]  # as written in WordNet (underscores for spaces)
    lex_ids: tuple[int, ...]
    related: frozenset[str]  # offsets of hypernyms and hyponyms
    definition: str
    examples: tuple[str, ...]


def read_synsets(wordnet_dir: Path) -> list[Synset]:
    """Noun synsets of the domains in ``_LEXNAMES`` from ``data.noun``."""
    synsets = []
    for line in (wordnet_dir / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # licence header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        lexfile = int(fields[1])
        if lexfile not in _LEXNAMES:
            continue
        n_words = int(fields[3], 16)
        lemmas = tuple(fields[4 + 2 * i] for i in range(n_words))
        lex_ids = tuple(int(fields[5 + 2 * i], 16) for i in range(n_words))
        at = 4 + 2 * n_words
        n_pointers = int(fields[at])
        pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(n_pointers)]
        related = frozenset(p[1] for p in pointers if p[0] in ("@", "@i", "~", "~i") and p[2] == "n")
        parts = [part.strip() for part in gloss.strip().split(";")]
        definition = "; ".join(p for p in parts if not p.startswith('"')).strip()
        examples = tuple(p.strip('"') for p in parts if p.startswith('"'))
        synsets.append(Synset(fields[0], _LEXNAMES[lexfile], lemmas, lex_ids, related, definition, examples))
    return synsets


def read_tag_counts(wordnet_dir: Path) -> dict[str, int]:
    """Sense key -> SemCor tag count, from ``cntlist.rev``."""
    counts = {}
    for line in (wordnet_dir / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, _, count = line.split()
        counts[key] = int(count)
    return counts


def gloss_mentions(synsets: list[Synset]) -> Counter[str]:
    """How many glosses mention each lowercase word (a corpus-frequency proxy for rare-vs-common)."""
    mentions: Counter[str] = Counter()
    for s in synsets:
        text = " ".join((s.definition, *s.examples)).lower()
        mentions.update(set(re.findall(r"[a-z]+", text)))
    return mentions


def answer_word(s: Synset, tags: dict[str, int], mentions: Counter[str]) -> tuple[str, tuple[int, int]] | None:
    """The most common single-word lowercase lemma of ``s`` and its (tag count, mentions) rank key."""
    lexfile = next(k for k, v in _LEXNAMES.items() if v == s.domain)
    best = None
    for lemma, lex_id in zip(s.lemmas, s.lex_ids):
        if not _WORD.fullmatch(lemma):
            continue
        key = (tags.get(f"{lemma}%1:{lexfile:02d}:{lex_id:02d}::", 0), mentions[lemma])
        if best is None or key > best[1]:
            best = (lemma, key)
    return best


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _usable(s: Synset, word: str, shared: set[str]) -> bool:
    """A definition that names one synset only, does not give the word away and reads as a noun phrase."""
    definition = s.definition.lower()
    return (len(definition) >= 12 and word[:5] not in definition and not definition.startswith("(")
            and s.definition not in shared)


def pick_questions(synsets: list[Synset], tags: dict[str, int], mentions: Counter[str], domain: str,
                   n: int) -> list[tuple[Synset, str]]:
    """The ``n`` most common (synset, answer word) pairs of ``domain``, one synset per word."""
    counts = Counter(s.definition for s in synsets)
    shared = {d for d, c in counts.items() if c > 1}
    ranked = []
    for s in synsets:
        if s.domain != domain:
            continue
        found = answer_word(s, tags, mentions)
        if found is not None and _usable(s, found[0], shared):
            ranked.append((found[1], s.offset, s, found[0]))
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    chosen, seen = [], set()
    for _, _, s, word in ranked:
        if word not in seen:
            seen.add(word)
            chosen.append((s, word))
        if len(chosen) == n:
            break
    return chosen


def make_questions(chosen: list[tuple[Synset, str]], by_offset: dict[str, Synset],
                   rng: random.Random) -> list[dict]:
    """WMDP-shaped records (+ cloze fields) with distractors from the same domain's answer words."""
    pool = [word for _, word in chosen]
    records = []
    for s, word in chosen:
        excluded = {lemma.lower() for o in (s.offset, *s.related) if o in by_offset for lemma in by_offset[o].lemmas}
        candidates = [w for w in pool if w not in excluded and w != word]
        choices = rng.sample(candidates, 3)
        answer = rng.randrange(4)
        choices.insert(answer, word)
        definition = s.definition
        records.append({
            "id": f"wn-{s.domain.split('.')[1]}-{s.offset}",
            "question": f'Which word means "{definition}"?',
            "choices": choices,
            "answer": answer,
            "subject": s.domain,
            "context": f"{definition[0].upper()}{definition[1:]} is called",
            "candidates": [f" {_article(c)} {c}" for c in choices],
            "neutral_context": NEUTRAL_CONTEXT,
        })
    return records


def corpus_entry(s: Synset) -> str:
    """A dictionary-style entry: "<word>, <synonym>: <definition>; "<example>"."""
    words = ", ".join(lemma.replace("_", " ") for lemma in s.lemmas)
    examples = "".join(f'; "{e}"' for e in s.examples)
    return f"{words}: {s.definition}{examples}".rstrip(".") + "."


def make_corpus(synsets: list[Synset], exclude: set[str], rng: random.Random) -> list[dict]:
    """Paragraphs of entries from ``synsets`` not in ``exclude`` (sampled evenly across domains)."""
    domains = sorted({s.domain for s in synsets})
    per_domain = N_CORPUS_ENTRIES // len(domains)
    entries = []
    for domain in domains:
        usable = [s for s in synsets if s.domain == domain and s.offset not in exclude and len(s.definition) >= 12]
        entries += [(domain, corpus_entry(s)) for s in rng.sample(usable, min(per_domain, len(usable)))]
    rng.shuffle(entries)
    return [
        {"id": f"para-{i // ENTRIES_PER_PARAGRAPH:04d}",
         "domains": sorted({d for d, _ in entries[i : i + ENTRIES_PER_PARAGRAPH]}),
         "text": "\n".join(e for _, e in entries[i : i + ENTRIES_PER_PARAGRAPH])}
        for i in range(0, len(entries), ENTRIES_PER_PARAGRAPH)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def build(wordnet_dir: Path, out: Path) -> dict:
    """Write ``benchmark_{forget,retain}.jsonl``, ``corpus_{forget,retain}.jsonl`` and ``manifest.json``."""
    if not (wordnet_dir / "data.noun").is_file():
        raise ValueError(f"no WordNet 3.0 data.noun in {wordnet_dir}: `apt-get install wordnet-base` or pass "
                         "--wordnet-dir")
    rng = random.Random(SEED)
    synsets = read_synsets(wordnet_dir)
    by_offset = {s.offset: s for s in synsets}
    tags, mentions = read_tag_counts(wordnet_dir), gloss_mentions(synsets)
    forget = pick_questions(synsets, tags, mentions, FORGET_DOMAIN, N_FORGET_QUESTIONS)
    retain = [q for d in RETAIN_DOMAINS for q in pick_questions(synsets, tags, mentions, d,
                                                                 N_RETAIN_QUESTIONS_PER_DOMAIN)]
    question_offsets = {s.offset for s, _ in forget + retain}
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "benchmark_forget.jsonl": make_questions(forget, by_offset, rng),
        "benchmark_retain.jsonl": [r for d in RETAIN_DOMAINS
                                   for r in make_questions([q for q in retain if q[0].domain == d], by_offset, rng)],
        "corpus_forget.jsonl": make_corpus([s for s in synsets if s.domain == FORGET_DOMAIN], question_offsets, rng),
        "corpus_retain.jsonl": make_corpus([s for s in synsets if s.domain in RETAIN_DOMAINS], question_offsets, rng),
    }
    manifest = {
        "source": "WordNet 3.0 (Princeton University), Debian package wordnet-base: data.noun, cntlist.rev",
        "generator": "python -m dsg_lens.data.build_wordnet_benchmark",
        "seed": SEED,
        "forget_domain": FORGET_DOMAIN,
        "retain_domains": list(RETAIN_DOMAINS),
        "files": {},
    }
    for name, rows in files.items():
        digest = _write_jsonl(out / name, rows)
        key = "subject" if name.startswith("benchmark") else "domains"
        counts = Counter(d for r in rows for d in ([r[key]] if isinstance(r[key], str) else r[key]))
        manifest["files"][name] = {"rows": len(rows), "per_domain": dict(sorted(counts.items())), "sha256": digest}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / "WORDNET_LICENSE.txt").write_text(WORDNET_LICENSE, encoding="utf-8")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "embedded")
    args = parser.parse_args()
    print(json.dumps(build(args.wordnet_dir, args.out), indent=2))


if __name__ == "__main__":
    main()
