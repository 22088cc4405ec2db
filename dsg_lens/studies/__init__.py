"""Robustness studies of DSG: relearning, sequential unlearning, data efficiency, zero-shot selection, latent
ablation, attacks on the gate. Each returns a JSON-able dict (schema in its module docstring) and writes ``<name>.json``."""

from dsg_lens.studies.attacks import attack_study, default_attacks, dilute, paraphrase, split_turns
from dsg_lens.studies.common import Setup, StudyConfig, load_setup
from dsg_lens.studies.efficiency import EfficiencyConfig, efficiency_study
from dsg_lens.studies.latent_ablation import LatentAblationConfig, latent_ablation_study
from dsg_lens.studies.relearn import RelearnConfig, relearn_study
from dsg_lens.studies.sequential import SequentialConfig, Topic, TopicSplit, embedded_topics, sequential_study
from dsg_lens.studies.zeroshot import ZeroShotConfig, seed_texts, zero_shot_features, zeroshot_study

__all__ = ["EfficiencyConfig", "LatentAblationConfig", "RelearnConfig", "SequentialConfig", "Setup", "StudyConfig",
           "Topic", "TopicSplit", "ZeroShotConfig", "latent_ablation_study", "seed_texts", "attack_study", "default_attacks", "dilute", "efficiency_study", "embedded_topics",
           "load_setup", "paraphrase", "relearn_study", "sequential_study", "split_turns", "zero_shot_features",
           "zeroshot_study"]
