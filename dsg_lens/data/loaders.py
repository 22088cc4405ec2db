"""Multiple-choice questions and text corpora, from the Hugging Face Hub or local copies, through one code path.

Every loader takes ``source``: a hub id (``"cais/wmdp"``) or a local path (a ``.jsonl``/``.json`` or
``.parquet`` file, or a folder written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``). Both are
opened with HF ``datasets`` and converted by the same functions, so offline users and tests exercise the code
that reads the hub. The embedded WordNet benchmark (``dsg_lens/data/embedded``) ships with the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
import datasets

__all__ = [
    "EMBEDDED_DIR",
    "DataUnavailableError",
    "MCQ",
    "fingerprint",
    "load_corpus",
    "load_embedded_benchmark",
    "load_embedded_corpus",
    "load_mcq",
    "load_mmlu",
    "load_wikitext",
    "load_wmdp",
    "load_wmdp_corpus",
    "open_dataset",
]

EMBEDDED_DIR = Path(__file__).parent / "embedded"
"""The WordNet forget/retain benchmark and corpora shipped with dsg-lens (see its README.md)."""

EMBEDDED_FORGET_DOMAIN = "noun.animal"

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataUnavailableError(ConnectionError):
    """A hub data set could not be reached (no network, or ``HF_HUB_OFFLINE`` set) and no local copy was given."""


@dataclass(frozen=True)
class MCQ:
    """One multiple-choice question (WMDP/MMLU shape) with optional cloze fields for completion scoring.

    ``answer`` indexes ``choices``. ``context``/``candidates`` (aligned with ``choices``) and
    ``neutral_context`` (the PMI reference) are set for cloze-style data; :meth:`cloze` derives them otherwise.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    context: str | None = None
    candidates: tuple[str, ...] | None = None
    neutral_context: str | None = None

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"question {self.id!r} has {len(self.choices)} choices: at least 2 are needed")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"question {self.id!r}: answer {self.answer} is not an index of its "
                             f"{len(self.choices)} choices")
        if self.candidates is not None and len(self.candidates) != len(self.choices):
            raise ValueError(f"question {self.id!r}: {len(self.candidates)} candidates for "
                             f"{len(self.choices)} choices (they must be aligned)")

    def cloze(self) -> tuple[str, tuple[str, ...], str]:
        """(context, candidate continuations, neutral context); lm-eval's ARC style when no cloze fields."""
        context = self.context if self.context is not None else f"{self.question}\nAnswer:"
        candidates = self.candidates if self.candidates is not None else tuple(f" {c}" for c in self.choices)
        neutral = self.neutral_context if self.neutral_context is not None else "Answer:"
        return context, candidates, neutral

    def permuted(self, order: Sequence[int]) -> MCQ:
        """The same question with choices (and candidates) in ``order`` (``order[k]`` = old index of slot k)."""
        return MCQ(
            id=self.id,
            question=self.question,
            choices=tuple(self.choices[i] for i in order),
            answer=list(order).index(self.answer),
            subject=self.subject,
            context=self.context,
            candidates=None if self.candidates is None else tuple(self.candidates[i] for i in order),
            neutral_context=self.neutral_context,
        )

    def to_dict(self) -> dict:
        row = asdict(self)
        row["choices"] = list(self.choices)
        if self.candidates is not None:
            row["candidates"] = list(self.candidates)
        return row

    @classmethod
    def from_row(cls, row: dict, index: int, default_subject: str = "") -> MCQ:
        """An MCQ from a data set row with fields ``question``, ``choices``, ``answer`` (+ optional ones)."""
        missing = [k for k in ("question", "choices", "answer") if k not in row]
        if missing:
            raise ValueError(f"row {index} lacks the field(s) {missing}: multiple-choice data needs question, "
                             f"choices and answer (found {sorted(row)})")
        candidates = row.get("candidates")
        return cls(
            id=str(row["id"]) if row.get("id") is not None else f"{default_subject or 'q'}-{index}",
            question=row["question"],
            choices=tuple(row["choices"]),
            answer=int(row["answer"]),
            subject=row.get("subject") or default_subject,
            context=row.get("context"),
            candidates=None if candidates is None else tuple(candidates),
            neutral_context=row.get("neutral_context"),
        )


def fingerprint(questions: Iterable[MCQ]) -> str:
    """A sha256 of the questions' content (ids, texts, choices, answers, cloze fields), order included."""
    digest = hashlib.sha256()
    for q in questions:
        digest.update(json.dumps(q.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def sample_questions(questions: Sequence[MCQ], k: int, seed: int = 0) -> list[MCQ]:
    """``k`` of ``questions``, stratified by subject: each subject keeps its share of ``k`` (largest remainders
    round), drawn at random with ``seed``; the result keeps the input order. All of them when ``k >= len``."""
    if k >= len(questions):
        return list(questions)
    by_subject: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_subject.setdefault(q.subject, []).append(i)
    shares = {s: k * len(idx) / len(questions) for s, idx in by_subject.items()}
    counts = {s: int(share) for s, share in shares.items()}
    for s in sorted(shares, key=lambda s: (counts[s] - shares[s], s))[: k - sum(counts.values())]:
        counts[s] += 1
    rng = random.Random(seed)
    chosen = sorted(i for s, idx in by_subject.items() for i in rng.sample(idx, counts[s]))
    return [questions[i] for i in chosen]


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the progress bars of ``datasets`` (it prints "Generating train split" for local files)."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _open_local(path: Path, split: str) -> datasets.Dataset:
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path} holds the splits {sorted(loaded)}, not {split!r}: pass split=...")
            return loaded[split]
        return loaded
    builder = _LOCAL_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"cannot read {path}: use a .jsonl/.json/.parquet file or a save_to_disk folder")
    if path.suffix.lower() == ".jsonl":
        _check_jsonl(path)
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _check_jsonl(path: Path) -> None:
    """Every non-blank line of ``path`` must be one JSON object; else a ValueError naming the file and the line
    (``datasets`` would only say that generating the data set failed)."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}, line {number}: not UTF-8 text ({error.reason})") from None
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno}); each "
                                 "line of a .jsonl file must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object "
                                 '(each line of a .jsonl file must be one object such as {"text": ...})')


def open_dataset(source: str | os.PathLike[str], config: str | None = None,
                 split: str = "test") -> datasets.Dataset:
    """The ``split`` of ``source``: a hub id (with ``config``) or a local file/folder (``config`` ignored).

    Raises :class:`DataUnavailableError` when the hub cannot be reached, naming how to use a local copy.
    """
    path = Path(source).expanduser()
    if path.exists():
        with _quiet():
            return _open_local(path, split)
    name = str(source)
    if path.suffix.lower() in _LOCAL_FORMATS or name.startswith((".", "/", "~")):
        raise ValueError(f"local data file {path} does not exist")
    try:
        return datasets.load_dataset(name, config, split=split)
    except ConnectionError as error:
        where = f"{name!r}" + (f" (config {config!r})" if config else "")
        raise DataUnavailableError(
            f"could not load {where} from the Hugging Face Hub: the network is unavailable (or HF_HUB_OFFLINE is "
            f"set). Where you have network, save a copy: datasets.load_dataset({name!r}, {config!r}, "
            f"split={split!r}).save_to_disk('DIR') (or .to_json('FILE.jsonl') / .to_parquet('FILE.parquet')), "
            f"then pass that local path as `source` instead of the hub id."
        ) from error


def load_mcq(source: str | os.PathLike[str], config: str | None = None, split: str = "test",
             subject: str = "") -> list[MCQ]:
    """Multiple-choice questions from ``source`` (hub id or local path); ``subject`` fills missing subjects."""
    dataset = open_dataset(source, config, split)
    return [MCQ.from_row(row, i, subject or config or "") for i, row in enumerate(dataset)]


def load_corpus(source: str | os.PathLike[str], config: str | None = None, split: str = "train",
                text_field: str = "text", min_chars: int = 0) -> list[str]:
    """The ``text_field`` of every row of ``source`` (hub id or local path) with at least ``min_chars`` chars."""
    dataset = open_dataset(source, config, split)
    if text_field not in dataset.column_names:
        raise ValueError(f"{source} has no field {text_field!r} (fields: {dataset.column_names}): pass "
                         "text_field=...")
    return [t for t in dataset[text_field] if t is not None and len(t) >= min_chars]


def load_wmdp(subset: str = "bio",
              source: str | os.PathLike[str] = "cais/wmdp") -> list[MCQ]:
    """The WMDP test questions of ``subset`` (hub config ``wmdp-<subset>``)."""
    if subset not in ("bio", "cyber", "chem"):
        raise ValueError(f"unknown WMDP subset {subset!r}: use 'bio', 'cyber' or 'chem'")
    return load_mcq(source, f"wmdp-{subset}", "test", subject=f"wmdp-{subset}")


def load_mmlu(subject: str, source: str | os.PathLike[str] = "cais/mmlu", split: str = "test") -> list[MCQ]:
    """The MMLU questions of ``subject`` (e.g. ``"high_school_us_history"``)."""
    return load_mcq(source, subject, split, subject=subject)


def load_wmdp_corpus(name: str = "cyber-forget",
                     source: str | os.PathLike[str] = "cais/wmdp-corpora", min_chars: int = 0) -> list[str]:
    """A WMDP corpus (hub config ``<name>-corpus``; the bio forget corpus is gated and not on this hub id)."""
    if name not in ("bio-retain", "cyber-forget", "cyber-retain"):
        raise ValueError(f"unknown WMDP corpus {name!r}: use 'bio-retain', 'cyber-forget' or 'cyber-retain'")
    return load_corpus(source, f"{name}-corpus", "train", min_chars=min_chars)


def load_wikitext(source: str | os.PathLike[str] = "wikitext", config: str = "wikitext-2-raw-v1",
                  split: str = "test", min_chars: int = 0) -> list[str]:
    """WikiText lines (the DSG paper's retain corpus: wikitext-2-raw-v1 test)."""
    return load_corpus(source, config, split, min_chars=min_chars)


def load_embedded_benchmark(domain: str = "forget") -> list[MCQ]:
    """The shipped WordNet benchmark: ``"forget"`` (noun.animal), ``"retain"`` (all retain domains), ``"all"``
    or one WordNet domain such as ``"noun.food"``."""
    forget = load_mcq(EMBEDDED_DIR / "benchmark_forget.jsonl")
    retain = load_mcq(EMBEDDED_DIR / "benchmark_retain.jsonl")
    if domain == "forget":
        return forget
    if domain == "retain":
        return retain
    if domain == "all":
        return forget + retain
    chosen = [q for q in forget + retain if q.subject == domain]
    if not chosen:
        domains = sorted({q.subject for q in forget + retain})
        raise ValueError(f"unknown domain {domain!r}: use 'forget', 'retain', 'all' or one of {domains}")
    return chosen


def load_embedded_corpus(kind: str = "forget") -> list[str]:
    """The shipped WordNet corpus paragraphs of the forget or retain domains (disjoint from the questions)."""
    if kind not in ("forget", "retain"):
        raise ValueError(f"unknown corpus {kind!r}: use 'forget' or 'retain'")
    return load_corpus(EMBEDDED_DIR / f"corpus_{kind}.jsonl")
