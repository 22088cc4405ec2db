"""Data: multiple-choice questions and corpora (hub ids or local copies) and the embedded WordNet benchmark."""

from dsg_lens.data.loaders import (
    EMBEDDED_DIR,
    MCQ,
    DataUnavailableError,
    fingerprint,
    load_corpus,
    load_embedded_benchmark,
    load_embedded_corpus,
    load_mcq,
    load_mmlu,
    load_wikitext,
    load_wmdp,
    load_wmdp_corpus,
    open_dataset,
)

__all__ = [
    "EMBEDDED_DIR",
    "MCQ",
    "DataUnavailableError",
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
