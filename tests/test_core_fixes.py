"""Regression tests: RMU defaults on short-context models, selection options a rule ignores, one corpus loss,
module names that do not clash."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch
from conftest import make_model, make_sae, texts

import dsg_lens as dsg
from dsg_lens.ablation import ablation_study
from dsg_lens.baselines import RMUConfig, rmu_unlearn
from dsg_lens.eval.corpus import corpus_loss


# ------------------------------------------------------------------------------- RMU on a short-context model
def test_rmu_defaults_work_on_a_model_with_short_context(tiny_tokenizer):
    model = make_model("gpt2", tiny_tokenizer)  # n_ctx = 64 < the old default max_len of 128
    long_text = " ".join(f"w{i % 44}" for i in range(150))  # longer than the context: cut into windows
    cfg = RMUConfig(layer=0, steering_coef=3.0, steps=2, batch_size=2)
    result = rmu_unlearn(model, [long_text, *texts(1, 3, True)], texts(2, 4, False), cfg, progress=False)
    assert len(result.log) == 2 and result.config.max_len == 64  # the length actually used is recorded
    assert cfg.max_len is None  # the caller's config is not modified


def test_rmu_explicit_max_len_longer_than_context_is_a_clear_error(tiny_tokenizer):
    model = make_model("gpt2", tiny_tokenizer)
    with pytest.raises(ValueError, match="max_len=65.*n_ctx=64"):
        rmu_unlearn(model, ["w1 w2"], ["w3 w4"], RMUConfig(layer=0, max_len=65), progress=False)
    with pytest.raises(ValueError, match="max_len"):
        rmu_unlearn(model, ["w1 w2"], ["w3 w4"], RMUConfig(layer=0, max_len=0), progress=False)


def test_relearn_fine_tuning_defaults_work_on_a_model_with_short_context(tiny_tokenizer):
    from dsg_lens.studies.common import lm_fine_tune

    model = make_model("gpt2", tiny_tokenizer)
    tuned = lm_fine_tune(model, texts(3, 4, True), steps=1, lr=1e-3)
    assert tuned is not model
    with pytest.raises(ValueError, match="max_len=65.*n_ctx=64"):
        lm_fine_tune(model, texts(3, 4, True), steps=1, lr=1e-3, max_len=65)


# ------------------------------------------------------------------------- selection options a rule ignores
def _stats_pair() -> tuple[dsg.LatentStats, dsg.LatentStats]:
    mean_f, mean_r = torch.tensor([1.0, 2.0, 3.0, 0.5]), torch.tensor([1.0, 0.0, 0.0, 2.0])
    n = 10
    return (dsg.LatentStats(mean_f * n, mean_f.square() * n, (mean_f > 0) * 1.0 * n, n, "h"),
            dsg.LatentStats(mean_r * n, mean_r.square() * n, (mean_r > 0) * 1.0 * n, n, "h"))


def test_farrell_rule_rejects_p_ratio_and_says_what_to_use():
    forget, retain = _stats_pair()
    with pytest.raises(ValueError, match=r"p_ratio.*farrell.*retain_threshold"):
        dsg.select_features(forget, retain, n=1, rule="farrell", p_ratio=90)


def test_dsg_rule_rejects_retain_threshold_and_unknown_options():
    forget, retain = _stats_pair()
    with pytest.raises(ValueError, match=r"retain_threshold.*dsg.*p_ratio"):
        dsg.select_features(forget, retain, n=1, rule="dsg", retain_threshold=0.1)
    with pytest.raises(ValueError, match="bogus"):
        dsg.select_features(forget, retain, n=1, bogus=1)
    # the options each rule does use still work
    assert dsg.select_features(forget, retain, n=1, rule="farrell", retain_threshold=0.0).ids == [1]
    assert dsg.select_features(forget, retain, n=1, p_ratio=50, statistic="mean_sq").rule == "dsg"


# ------------------------------------------------------------------------------------------- one corpus loss
def test_ablation_baseline_loss_is_corpus_loss(tiny_gpt2):
    corpus = texts(8, 5, False)
    rows = ablation_study(tiny_gpt2, make_sae(), [1, 2], corpus, batch_size=2, progress=False)
    reference = corpus_loss(tiny_gpt2, corpus, batch_size=2, progress=False)
    assert rows[0]["ablation"] == "none"
    assert rows[0]["n_tokens"] == reference.n_tokens  # BOS -> first word is not a counted prediction
    assert rows[0]["loss"] == pytest.approx(reference.mean_loss, abs=1e-12)


def test_only_one_corpus_loss_exists():
    import dsg_lens.ablation

    assert not hasattr(dsg_lens.ablation, "corpus_loss") or dsg_lens.ablation.corpus_loss is corpus_loss


# ------------------------------------------------------------------------------------------------ module names
def test_renamed_modules_do_not_clash():
    assert importlib.util.find_spec("dsg_lens.viz.tokens") is None  # clashed with dsg_lens.tokens
    assert importlib.util.find_spec("dsg_lens.commands.pipeline") is None  # clashed with dsg_lens.pipeline
    assert hasattr(importlib.import_module("dsg_lens.viz.token_views"), "gate_view")
    assert hasattr(importlib.import_module("dsg_lens.commands.fit_eval"), "register")
    from dsg_lens.cli import build_parser

    parser = build_parser()
    for command in ("demo", "fit", "eval", "sweep"):
        assert parser.parse_args([command, "--out", "o"]).func is not None
