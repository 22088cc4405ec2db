"""Data loaders: local JSONL/parquet/arrow through the hub code path, offline errors, the embedded benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from dsg_lens.data import (
    EMBEDDED_DIR,
    MCQ,
    DataUnavailableError,
    fingerprint,
    load_corpus,
    load_embedded_benchmark,
    load_embedded_corpus,
    load_mcq,
    load_mmlu,
    load_wmdp,
    load_wmdp_corpus,
)
from dsg_lens.data.build_wordnet_benchmark import build

ROWS = [
    {"question": "What is 2+2?", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Capital of France?", "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": 0},
]


def _check_rows(questions: list[MCQ], subject: str) -> None:
    assert [q.question for q in questions] == [r["question"] for r in ROWS]
    assert [q.choices for q in questions] == [tuple(r["choices"]) for r in ROWS]
    assert [q.answer for q in questions] == [1, 0]
    assert [q.id for q in questions] == [f"{subject}-0", f"{subject}-1"]
    assert all(q.subject == subject for q in questions)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow", "arrow_dict"])
def test_local_copies_load_like_the_hub(tmp_path, fmt):
    ds = datasets.Dataset.from_list(ROWS)
    if fmt == "jsonl":
        path = tmp_path / "wmdp.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "parquet":
        path = tmp_path / "wmdp.parquet"
        ds.to_parquet(str(path))
    elif fmt == "arrow":
        path = tmp_path / "wmdp_arrow"
        ds.save_to_disk(str(path))
    else:
        path = tmp_path / "wmdp_dict"
        datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    _check_rows(load_wmdp("bio", source=path), "wmdp-bio")
    _check_rows(load_mmlu("college_biology", source=path), "college_biology")


def test_arrow_dict_names_missing_split(tmp_path):
    path = tmp_path / "d"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(path))
    with pytest.raises(ValueError, match="splits.*train"):
        load_mcq(path, split="test")


def test_corpus_from_local_file_filters_short_texts(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["short", "a much longer text here", ""]))
    assert load_wmdp_corpus("cyber-forget", source=path, min_chars=6) == ["a much longer text here"]
    with pytest.raises(ValueError, match="no field 'body'"):
        load_corpus(path, text_field="body")


def test_bad_inputs_raise_value_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="lacks the field.*answer"):
        load_mcq(bad)
    out_of_range = tmp_path / "oor.jsonl"
    out_of_range.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(ValueError, match="not an index"):
        load_mcq(out_of_range)
    with pytest.raises(ValueError, match="does not exist"):
        load_mcq(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown WMDP subset"):
        load_wmdp("physics")


def test_hub_unreachable_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty_cache")
    with pytest.raises(DataUnavailableError, match="network is unavailable.*save_to_disk.*local") as info:
        load_wmdp("cyber")
    assert "cais/wmdp" in str(info.value) and "wmdp-cyber" in str(info.value)


def test_mcq_permutation_and_cloze():
    q = MCQ("x", "Q?", ("a", "b", "c"), answer=0, candidates=(" A", " B", " C"), context="ctx")
    p = q.permuted([2, 0, 1])
    assert p.choices == ("c", "a", "b") and p.candidates == (" C", " A", " B") and p.answer == 1
    assert MCQ("y", "Q?", ("a", "b"), 1).cloze() == ("Q?\nAnswer:", (" a", " b"), "Answer:")
    assert fingerprint([q]) != fingerprint([p]) and fingerprint([q]) == fingerprint([q.permuted([0, 1, 2])])
    with pytest.raises(ValueError, match="aligned"):
        MCQ("z", "Q?", ("a", "b"), 0, candidates=(" a",))


def test_embedded_benchmark_shape_and_disjoint_corpora():
    forget, retain = load_embedded_benchmark("forget"), load_embedded_benchmark("retain")
    assert {q.subject for q in forget} == {"noun.animal"}
    assert "noun.animal" not in {q.subject for q in retain} and len({q.subject for q in retain}) >= 4
    for q in forget + retain:
        assert len(q.choices) == 4 and len(set(q.choices)) == 4
        assert q.candidates[q.answer].endswith(" " + q.choices[q.answer])
        assert q.context.endswith(" is called") and q.neutral_context == "It is called"
    ids = [q.id for q in forget + retain]
    assert len(ids) == len(set(ids))
    assert load_embedded_benchmark("noun.food") == [q for q in retain if q.subject == "noun.food"]
    with pytest.raises(ValueError, match="unknown domain"):
        load_embedded_benchmark("noun.weather")
    corpus = load_embedded_corpus("forget") + load_embedded_corpus("retain")
    # corpus entries come from synsets disjoint from the question synsets: no question definition appears
    definitions = {q.question.split('"')[1] for q in forget + retain}
    entries = {line.split(": ", 1)[1].split('; "')[0].rstrip(".") for text in corpus for line in text.split("\n")}
    assert not definitions & entries
    assert all(len(t) > 50 for t in corpus)


def test_generator_reproduces_committed_data(tmp_path):
    wordnet = Path("/usr/share/wordnet")
    if not (wordnet / "data.noun").is_file():
        pytest.skip("WordNet 3.0 (apt package wordnet-base) not installed")
    manifest = build(wordnet, tmp_path)
    committed = json.loads((EMBEDDED_DIR / "manifest.json").read_text())
    assert manifest == committed


def test_sample_questions_is_stratified_seeded_and_ordered():
    """A domain-sorted file (60 a, 30 b, 10 c): k=10 keeps the shares 6 / 3 / 1 (by hand), input order, the same
    sample for the same seed; k >= n keeps everything; 7 of 3 equal subjects round by largest remainder (3/2/2)."""
    from dsg_lens.data.loaders import MCQ, sample_questions

    def questions(sizes):
        return [MCQ(id=f"{s}{i}", question="q", choices=("x", "y"), answer=0, subject=s)
                for s, n in sizes.items() for i in range(n)]

    pool = questions({"a": 60, "b": 30, "c": 10})
    picked = sample_questions(pool, 10, seed=0)
    assert [q.subject for q in picked].count("a") == 6 and [q.subject for q in picked].count("b") == 3
    assert [q.subject for q in picked].count("c") == 1
    assert [pool.index(q) for q in picked] == sorted(pool.index(q) for q in picked)
    assert picked == sample_questions(pool, 10, seed=0) and picked != sample_questions(pool, 10, seed=1)
    assert picked != pool[:10]  # not the head of the file
    assert sample_questions(pool, 100) == pool and sample_questions(pool, 500) == pool
    counts = sorted(([q.subject for q in sample_questions(questions({"a": 5, "b": 5, "c": 5}), 7)].count(s)
                     for s in "abc"), reverse=True)
    assert counts == [3, 2, 2]
