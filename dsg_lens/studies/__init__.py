"""Robustness studies of DSG: relearning, sequential unlearning, data efficiency, zero-shot selection, attacks on
the gate. Each returns a JSON-able dict (schema in its module docstring) and writes ``<name>.json``."""

from dsg_lens.studies.attacks import attack_study, default_attacks, dilute, paraphrase, split_turns
from dsg_lens.studies.common import Setup, load_setup
from dsg_lens.studies.efficiency import efficiency_study
from dsg_lens.studies.relearn import relearn_study
from dsg_lens.studies.sequential import Topic, embedded_topics, sequential_study
from dsg_lens.studies.zeroshot import zero_shot_features, zeroshot_study

__all__ = ["Setup", "Topic", "attack_study", "default_attacks", "dilute", "efficiency_study", "embedded_topics",
           "load_setup", "paraphrase", "relearn_study", "sequential_study", "split_turns", "zero_shot_features",
           "zeroshot_study"]
