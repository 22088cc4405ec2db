"""Robustness studies on tiny planted-feature models (fast)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import make_model, planted_setup, texts
from tiny_mcq import NEUTRAL, word_mcqs, word_texts

import dsg_lens as dsg
from dsg_lens.baselines import RMUConfig, rmu_unlearn
from dsg_lens.data.loaders import MCQ
from dsg_lens.gate import WindowGate
from dsg_lens.studies import (
    EfficiencyConfig,
    RelearnConfig,
    SequentialConfig,
    Topic,
    ZeroShotConfig,
    attack_study,
    default_attacks,
    dilute,
    efficiency_study,
    embedded_topics,
    paraphrase,
    relearn_study,
    sequential_study,
    split_turns,
    zeroshot_study,
)
from dsg_lens.studies.attacks import filler_text
from dsg_lens.studies.common import accuracy
from dsg_lens.studies.efficiency import subset


@pytest.fixture(scope="module")
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    return model, sae


@pytest.fixture(scope="module")
def guards(planted):
    model, sae = planted
    calibration = word_texts(1, 60, n_forget=1)
    # the paper's rho in its causal form: completion scoring refuses the non-causal PaperGate
    paper = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, clamp=20.0, gate=dsg.PrefixGate(min_tokens=4),
                                        progress=False)
    window = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, clamp=20.0,
                                         gate=WindowGate(window=8, min_tokens=4), progress=False)
    return {"paper": paper, "window": window}


def cloze(context: str) -> MCQ:
    return MCQ(id="q", question=f'Which word means "{context}"?', choices=("a", "b"), answer=1, context=f"{context} is called",
               candidates=(" an a", " a b"), neutral_context="It is called")


# ------------------------------------------------------------------------------------------------- attacks
def test_rewrites_keep_the_answer_and_change_the_context(tiny_gpt2):
    q = cloze("Large carnivorous feline")
    diluted = dilute(q, "some filler")
    assert diluted.cloze()[0] == "some filler\n\nLarge carnivorous feline is called"
    assert diluted.cloze()[1:] == q.cloze()[1:] and diluted.answer == q.answer
    assert dilute(q, "") is q and split_turns(tiny_gpt2, q, 1) is q
    split = split_turns(tiny_gpt2, q, 3)
    context = split.cloze()[0]
    assert context.count("Assistant: Go on.") == 2 and context.endswith("is called")
    assert "Large carnivorous" in context and split.cloze()[1] == q.cloze()[1]
    assert paraphrase(q, "The word for {gloss} is").cloze()[0] == "The word for large carnivorous feline is"
    with pytest.raises(ValueError, match="is called"):
        paraphrase(MCQ(id="x", question="q", choices=("a", "b"), answer=0), "{gloss}")
    with pytest.raises(ValueError, match="n_turns"):
        split_turns(tiny_gpt2, q, 0)


def test_filler_text_has_the_requested_length(tiny_gpt2):
    text = filler_text(tiny_gpt2, [" ".join(NEUTRAL)], 20)
    assert tiny_gpt2.to_tokens(text, prepend_bos=False).shape[1] == 20
    with pytest.raises(ValueError, match="fewer"):
        filler_text(tiny_gpt2, ["w1 w2"], 20)


def test_attack_study_dilution_beats_paper_gate_not_window_gate(planted, guards, tmp_path):
    model, _ = planted
    fq, rq = word_mcqs(40, 8, True), word_mcqs(41, 8, False)
    attacks = default_attacks(model, [" ".join(NEUTRAL)], filler_tokens=(0, 40), filler_after=(), turns=(1, 2),
                              paraphrases=())
    result = attack_study(model, guards, fq, rq, attacks, batch_size=4, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "attacks.json").read_text()) == result
    dilution = {row["strength"]: row["guards"] for row in result["attacks"]["dilution"]}
    assert dilution[0]["paper"]["firing_rate"] == 1.0 and dilution[0]["window"]["firing_rate"] == 1.0
    assert dilution[40]["paper"]["firing_rate"] <= 0.25
    assert dilution[40]["window"]["firing_rate"] == 1.0
    assert set(result["attacks"]) == {"dilution", "split"}
    for name in guards:  # retain questions never contain forget words: no false positives, accuracy unchanged
        assert result["retain"][name]["fpr"] == 0.0
        assert result["retain"][name]["retain_acc"] == result["base_retain_acc"]


# ------------------------------------------------------------------------------------------------- relearn
def test_relearn_curve_with_methods_attached_while_fine_tuning(planted, guards, tmp_path):
    from dsg_lens.baselines import StaticClamp
    from dsg_lens.studies.common import lm_fine_tune

    model, sae = planted
    fq, rq = word_mcqs(50, 6, True), word_mcqs(54, 4, False)
    rmu = rmu_unlearn(model, texts(51, 8, True), texts(52, 8, False),
                      RMUConfig(layer=0, steering_coef=3.0, steps=2, batch_size=2, max_len=8), progress=False)
    static = StaticClamp(sae, [5], 20.0)
    before = model.W_E.detach().clone()
    forget_texts = texts(53, 6, True)
    cfg = RelearnConfig(steps=3, lr=5e-2, n_texts=4, max_len=16, batch_size=2)
    result = relearn_study(model, forget_texts, fq, cfg, attached={"static_clamp": static, "dsg": guards["paper"]},
                           unlearned={"rmu": rmu.model}, retain_questions=rq, out_dir=tmp_path, progress=False)
    assert torch.equal(model.W_E, before) and dsg.attached_hooks(model) == []  # copies; every hook removed
    assert result["arms"] == ["base", "static_clamp", "dsg", "rmu"] and result["params"]["n_texts"] == 4
    assert [row["step"] for row in result["curve"]] == [0, 1, 2, 3]
    first, last = result["curve"][0], result["curve"][-1]
    assert first["base_forget_acc"] == accuracy(model, fq, batch_size=8)
    assert first["rmu_forget_acc"] == accuracy(rmu.model, fq, batch_size=8)
    with guards["paper"].attached(model):
        assert first["dsg_forget_acc"] == accuracy(model, fq, batch_size=8)
    assert first["base_loss"] is None
    assert all(row[f"{a}_loss"] > 0 for row in result["curve"][1:] for a in result["arms"])
    assert all(0 <= row["dsg_firing_rate"] <= 1 for row in result["curve"]) and "static_clamp_firing_rate" not in last
    from dsg_lens.pipeline import question_texts

    contexts = question_texts(fq, "completion", model)  # step 0: the gate on the untouched model, detached
    assert first["dsg_firing_rate"] == float(guards["paper"].is_forget(model, contexts).float().mean()) > 0
    assert all(f"{a}_retain_acc" in last for a in result["arms"])
    # the static clamp arm equals fine-tuning by hand with the clamp attached (an independent run)
    by_hand = lm_fine_tune(model, forget_texts[:4], steps=3, lr=5e-2, batch_size=2, max_len=16, attached=static)
    with static.attached(by_hand):
        assert last["static_clamp_forget_acc"] == accuracy(by_hand, fq, batch_size=8)
    plain = lm_fine_tune(model, forget_texts[:4], steps=3, lr=5e-2, batch_size=2, max_len=16)
    with static.attached(plain):
        clamped_after = plain(model.to_tokens(forget_texts[0]))
    with static.attached(by_hand):
        assert not torch.allclose(by_hand(model.to_tokens(forget_texts[0])), clamped_after)  # trained through it
    assert json.loads((tmp_path / "relearn.json").read_text()) == result
    with pytest.raises(ValueError, match="eval_steps"):
        RelearnConfig(steps=2, eval_steps=(5,))
    with pytest.raises(ValueError, match="distinct"):
        relearn_study(model, forget_texts, fq, cfg, attached={"base": static}, progress=False)


# ---------------------------------------------------------------------------------------------- sequential
def test_sequential_composes_guardrails_and_removes_them(planted):
    model, sae = planted
    topics = [Topic("a", texts(60, 12, True), word_mcqs(61, 6, True)),
              Topic("b", word_texts(62, 12, n_forget=3), word_mcqs(63, 6, True))]
    rq = word_mcqs(64, 8, False)
    r_tok = model.to_tokens(texts(65, 1, False))
    reference = model(r_tok)
    calibration = word_texts(67, 20, n_forget=0)
    result = sequential_study(model, sae, topics, texts(66, 24, False), rq,
                              SequentialConfig(n=1, p_ratio=90, clamp=20.0, batch_size=4),
                              gate=WindowGate(window=4, min_tokens=1), calibration_texts=calibration, progress=False)
    assert [s["added"] for s in result["steps"]] == [None, "a", "b"]
    assert all(s["retain_acc"] == result["steps"][0]["retain_acc"] for s in result["steps"])
    assert result["steps"][1]["features"] == [5] and result["steps"][2]["features"] == [5]
    assert set(result["steps"][2]["forget_acc"]) == {"a", "b"}
    assert result["params"]["n_calibration_texts"] == 20 and result["params"]["gate"]["kind"] == "window"
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, clamp=20.0,
                                        gate=WindowGate(window=4, min_tokens=1), progress=False)
    assert result["steps"][1]["tau"] == guard.gate.tau  # calibrated on the texts given
    with guard.attached(model):
        assert result["steps"][1]["forget_acc"]["a"] == accuracy(model, topics[0].questions, batch_size=4)
    assert dsg.attached_hooks(model) == []
    assert torch.equal(model(r_tok), reference)


def test_embedded_topics_split_questions_without_overlap():
    from dsg_lens.pipeline import is_calibration_question

    split = embedded_topics(("noun.animal", "noun.food", "noun.artifact"), max_questions=20)
    topics = split.topics
    assert [t.name for t in topics] == ["noun.animal", "noun.food", "noun.artifact"]
    for topic in topics:
        assert len(topic.questions) == 20 and all(q.subject == topic.name for q in topic.questions)
        held_out = {f"{q.cloze()[0]}{q.cloze()[1][q.answer]}." for q in topic.questions}
        assert not held_out & set(topic.texts)
    retain_q = split.retain_questions
    assert len(retain_q) == 40 and {q.subject for q in retain_q} == {"noun.body", "noun.location", "noun.plant",
                                                                      "noun.substance"}
    assert split.retain_texts and not set(split.retain_texts) & set(topics[0].texts)
    calibration = split.calibration_questions
    assert calibration and all(is_calibration_question(q) for q in calibration)
    assert {q.subject for q in calibration} == {q.subject for q in retain_q}
    evaluated = {q.id for q in retain_q} | {q.id for t in topics for q in t.questions}
    assert not evaluated & {q.id for q in calibration}
    with pytest.raises(ValueError, match="unknown"):
        embedded_topics(("noun.bogus",))


# ---------------------------------------------------------------------------------------------- efficiency
def test_subset_is_seeded_and_sized():
    items = [str(i) for i in range(200)]
    assert subset(items, 0.05, seed=1) == subset(items, 0.05, seed=1) != subset(items, 0.05, seed=2)
    assert len(subset(items, 0.05)) == 10 and len(subset(items, 0.001)) == 1 and subset(items, 1.0) == items
    with pytest.raises(ValueError, match="fraction"):
        subset(items, 0.0)


def test_efficiency_study(planted, tmp_path):
    model, sae = planted
    fq, rq = word_mcqs(72, 4, True), word_mcqs(73, 4, False)
    gate = WindowGate(window=4, min_tokens=1)
    calibration = word_texts(74, 12, n_forget=0)
    result = efficiency_study(model, sae, texts(70, 20, True), texts(71, 24, False), fq, rq,
                              EfficiencyConfig(fractions=(0.1, 1.0), n=1, p_ratio=90, clamp=20.0, batch_size=4),
                              gate=gate, calibration_texts=calibration, out_dir=tmp_path, progress=False)
    assert [r["fraction"] for r in result["rows"]] == [1.0, 0.1]
    assert [r["n_texts"] for r in result["rows"]] == [20, 2]
    assert all(r["features"] == [5] and r["jaccard_vs_largest"] == 1.0 for r in result["rows"])
    assert all(r["retain_acc"] == result["base"]["retain_acc"] and r["fpr"] == 0.0 for r in result["rows"])
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, clamp=20.0, gate=gate, progress=False)
    with guard.attached(model):  # the re-scoring shortcut against scoring everything with the guardrail
        assert result["rows"][0]["forget_acc"] == accuracy(model, fq, batch_size=4)
    assert result["params"]["gate"]["kind"] == "window" and result["params"]["n_calibration_texts"] == 12
    assert (tmp_path / "efficiency.json").is_file()


# ------------------------------------------------------------------------------------------------ zero-shot
def test_seed_texts_are_seeded_shuffles_of_the_words():
    from dsg_lens.studies.zeroshot import seed_texts

    out = seed_texts(["cat", "dog", "fox"], n_orders=5, seed=3)
    assert out == seed_texts(["cat", "dog", "fox"], n_orders=5, seed=3) and len(out) == 5
    assert all(sorted(t.split(", ")) == ["cat", "dog", "fox"] for t in out) and len(set(out)) > 1
    with pytest.raises(ValueError, match="seed word"):
        seed_texts([])


def test_generic_word_lists_match_the_seed_format_without_the_seed_words():
    from dsg_lens.studies.zeroshot import generic_word_lists

    lists = generic_word_lists(["The cat sat; a dog (w1) ran.", "w2 w3, x w4!"], ["Cat"], 3, 4)
    assert len(lists) == 4 and lists == generic_word_lists(["The cat sat; a dog (w1) ran.", "w2 w3, x w4!"],
                                                           ["Cat"], 3, 4)
    words = {w for text in lists for w in text.split(", ")}
    assert all(len(text.split(", ")) == 3 for text in lists)
    assert words <= {"the", "sat", "dog", "w1", "ran", "w2", "w3", "w4"}  # no seed word, no 1-letter word
    with pytest.raises(ValueError, match="fewer"):
        generic_word_lists(["a b"], [], 3, 1)


def test_zeroshot_finds_the_planted_latent_from_seed_words_and_scans_tau(planted):
    model, sae = planted
    fq, rq = word_mcqs(81, 6, True), word_mcqs(82, 6, False)
    gate = WindowGate(window=4, min_tokens=1)
    result = zeroshot_study(model, sae, ["cat", "dog", "fox"], texts(80, 24, False), fq, rq,
                            ZeroShotConfig(taus=(0.1, 0.95), n=1, p_ratio=90, clamp=20.0, batch_size=4, n_orders=4,
                                           min_retain=0.0),
                            gate=gate, progress=False)
    assert result["features"] == [5] and result["seed_words"] == ["cat", "dog", "fox"]
    low, high = result["rows"]
    assert low["tpr"] == 1.0 and high["tpr"] < low["tpr"] and low["fpr"] == 0.0
    guard = dsg.DynamicSAEGuardrail(sae, [5], gate.with_tau(0.1), clamp=20.0)
    with guard.attached(model):
        assert low["forget_acc"] == accuracy(model, fq, batch_size=4)
    assert result["best"] == min(result["rows"], key=lambda r: (r["forget_acc"], -r["retain_acc"]))
    with pytest.raises(ValueError, match="taus"):
        ZeroShotConfig(taus=(1.5,))


@pytest.mark.parametrize("config", [EfficiencyConfig(fractions=(0.5, 1.0), clamp_scale=2.0), SequentialConfig(n=3),
                                    ZeroShotConfig(taus=(0.2,)),
                                    RelearnConfig(steps=4, eval_steps=(0, 4), n_texts=None)])
def test_study_configs_round_trip_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(data) == config
    with pytest.raises(ValueError, match="no settings"):
        type(config).from_dict({**data, "typo": 1})


def test_study_configs_take_the_pipeline_settings():
    from dsg_lens.pipeline import PipelineConfig

    pipeline = PipelineConfig(n=7, p_ratio=80.0, clamp=3.0, batch_size=2, protocol="chat")
    cfg = EfficiencyConfig.from_pipeline(pipeline, fractions=(1.0,))
    assert (cfg.n, cfg.p_ratio, cfg.clamp, cfg.batch_size, cfg.protocol, cfg.fractions) == (7, 80.0, 3.0, 2, "chat",
                                                                                          (1.0,))
    assert ZeroShotConfig.from_pipeline(pipeline).n == 7


def test_runners_pass_the_setup_settings_to_the_studies(planted, tmp_path):
    from dsg_lens.pipeline import PipelineConfig
    from dsg_lens.studies import Setup
    from dsg_lens.studies.runners import run_efficiency, run_relearn, run_static_sweep, run_zeroshot

    model, sae = planted
    cfg = PipelineConfig(n=1, p_ratio=90.0, clamp=20.0, batch_size=4, calibration="corpus", window=4, min_tokens=1)
    setup = Setup(model, sae, texts(90, 12, True), texts(91, 24, False), word_mcqs(92, 4, True),
                  word_mcqs(93, 4, False), cfg)
    efficiency = run_efficiency(setup, tmp_path, fractions=(1.0,), progress=False)
    assert efficiency["rows"][0]["features"] == [5]
    assert {k: efficiency["params"][k] for k in ("n", "p_ratio", "clamp", "batch_size", "fractions")} == {
        "n": 1, "p_ratio": 90.0, "clamp": 20.0, "batch_size": 4, "fractions": [1.0]}
    assert efficiency["params"]["gate"] == {"kind": "window", "tau": 0.0, "window": 4, "min_tokens": 1,
                                            "latch": True}
    zeroshot = run_zeroshot(setup, tmp_path, seed_words=("cat", "dog", "fox"), n_generic=24, taus=(0.1,),
                            progress=False)
    assert zeroshot["features"] == [5] and zeroshot["params"]["taus"] == [0.1]
    static = run_static_sweep(setup, tmp_path, retain_thresholds=(0.0,), n_values=(1,), multipliers=(20.0,),
                              progress=False)
    assert static["rows"][0]["features"] == [5] and static["params"]["config"]["n"] == 1
    (tmp_path / "static_clamp").mkdir()
    (tmp_path / "static_clamp" / "static_clamp_sweep.json").write_text(json.dumps(static))
    relearn = run_relearn(setup, tmp_path, RelearnConfig(n_texts=2, steps=1, lr=1e-3), arms=("static_clamp", "dsg"),
                          best_from=tmp_path, min_retain=0.0, progress=False)
    assert relearn["params"]["eval_batch_size"] == 4 and relearn["params"]["max_len"] == 64  # min(128, n_ctx)
    assert relearn["arms"] == ["base", "static_clamp", "dsg"]
    assert relearn["params"]["settings"]["static_clamp"] == {"n": 1, "retain_threshold": 0.0, "multiplier": 20.0}
    assert relearn["params"]["points"]["static_clamp"]["row"]["multiplier"] == 20.0  # the best point of the sweep
    assert set(relearn["params"]["settings"]) == {"static_clamp", "dsg"}
    assert {p.name for p in tmp_path.iterdir() if p.is_file()} == {"efficiency.json", "zeroshot.json",
                                                                   "relearn.json", "static_clamp_sweep.json"}


def test_cli_parses_compare_and_study_commands():
    from dsg_lens.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["compare", "--out", "o", "--methods", "base", "rmu", "--rmu-steps", "3"])
    assert args.methods == ["base", "rmu"] and args.rmu_steps == 3 and args.rmu_layer is None
    args = parser.parse_args(["study", "attacks", "--out", "o", "--filler-tokens", "0", "64", "--window", "16"])
    assert args.study == "attacks" and args.filler_tokens == [0, 64] and args.window == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["study", "bogus", "--out", "o"])


def test_gate_shapes_study_on_the_planted_feature(planted):
    """The planted latent fires only on forget words: every gate calibrated on retain questions has FPR 0 and
    TPR 1 on questions full of forget words (cloze and plain shapes: the tiny tokenizer has no chat template)."""
    from dsg_lens.studies.gate_shapes import GateShapesConfig, best_rows, gate_shapes_study

    model, sae = planted
    forget_stats = dsg.collect_latent_stats(model, sae, word_texts(1, 20, n_forget=4), progress=False)
    retain_stats = dsg.collect_latent_stats(model, sae, word_texts(2, 20, n_forget=0), progress=False)
    forget_q, retain_q, held_out = word_mcqs(3, 6, True), word_mcqs(4, 6, False), word_mcqs(5, 6, False)
    held_out = [replace(q, id=f"cal-{q.id}") for q in held_out]
    config = GateShapesConfig(n_values=(1,), p_ratio=90.0, gates={
        "paper": {"kind": "paper"}, "window": {"kind": "window", "window": 4, "min_tokens": 1}})
    result = gate_shapes_study(model, sae, forget_stats, retain_stats, forget_q, retain_q, held_out,
                               word_texts(6, 10, n_forget=0), config)
    assert result["params"]["shapes"] == ["cloze", "plain"] and len(result["rows"]) == 2 * 2
    questions = [r for r in result["rows"] if r["calibration"] == "questions"]
    for row in questions:
        assert row["tau"] == 0.0
        assert all(v["fpr"] == 0.0 and v["auroc"] == 1.0 for v in row["by_shape"].values())
    assert best_rows(result)[0]["by_shape"]["cloze"]["tpr"] == 1.0
    with pytest.raises(ValueError, match="also evaluated"):
        gate_shapes_study(model, sae, forget_stats, retain_stats, forget_q, retain_q, retain_q[:1], [], config)
    with pytest.raises(ValueError, match="calibrations"):
        GateShapesConfig(calibrations=("magic",))


# ------------------------------------------------------------------------------------ latent ablation, figures
def test_latent_ablation_study_measures_each_latent_against_the_unablated_model(planted, tmp_path):
    from dsg_lens.eval.corpus import sequences_loss
    from dsg_lens.interventions import zero_ablate
    from dsg_lens.studies.latent_ablation import LatentAblationConfig, latent_ablation_study
    from dsg_lens.tokens import to_sequences

    model, sae = planted
    forget, retain = texts(100, 6, True), texts(101, 6, False)
    result = latent_ablation_study(model, sae, [5, 7], forget, retain,
                                   LatentAblationConfig(n_texts=4, batch_size=2, max_len=None), out_dir=tmp_path,
                                   progress=False)
    assert result["latents"] == [5, 7] and set(result["effects"]) == {"forget text", "retain text"}
    sequences = to_sequences(model, forget[:4])
    plain = sequences_loss(model, sequences, batch_size=2, progress=False).mean_loss
    with dsg.scoped_hooks(model, zero_ablate(sae, [5])):
        ablated = sequences_loss(model, sequences, batch_size=2, progress=False).mean_loss
    assert result["effects"]["forget text"][0] == pytest.approx(ablated - plain, abs=1e-6)
    assert result["effects"]["retain text"][0] == pytest.approx(0.0, abs=1e-6)  # latent 5 never fires on retain text
    assert (tmp_path / "latent_ablation.json").is_file()


def test_study_results_draw_their_figures(tmp_path):
    from dsg_lens.viz.render import render_figures

    results = tmp_path / "results"
    base = {"forget_acc": 1.0, "retain_acc": 1.0}
    rows = [{"fraction": f, "n_texts": int(500 * f), "forget_acc": 0.9 - 0.2 * f, "retain_acc": 0.98,
             "forget_ci95": [0.8 - 0.2 * f, 0.95 - 0.2 * f], "retain_ci95": [0.95, 0.99], "tpr": 0.4, "fpr": 0.05,
             "jaccard_vs_largest": f, "features": [1], "tau": 0.2} for f in (0.1, 0.5, 1.0)]
    zeroshot = {"features": [1, 2], "seed_words": ["cat", "dog"], "base": base, "best": None,
                "rows": [{"tau": t, "forget_acc": 0.5 + t / 2, "retain_acc": 0.9 + t / 10, "tpr": 1 - t,
                          "fpr": 0.2 - t / 5} for t in (0.1, 0.5)]}
    ablation = {"latents": [3, 4], "effects": {"forget text": [0.2, 0.1], "retain text": [0.01, 0.0]},
                "metric": "change in next-token loss (nats)", "rows": {"forget text": []}}
    static = {"base": base, "pareto": [], "params": {"method": "static_clamp"},
              "rows": [{"retain_threshold": 0.01, "n": 10, "multiplier": m, "forget_acc": 1 - m / 400,
                        "retain_acc": 1 - m / 4000} for m in (25.0, 200.0)]}
    relearn = {"arms": ["base", "static_clamp", "dsg", "rmu"], "params": {"lr": 1e-4, "n_texts": 32, "batch_size": 4},
               "curve": [{"step": s, **{f"{a}_forget_acc": 0.5 + s / 20 for a in ("base", "static_clamp", "dsg",
                                                                                  "rmu")}} for s in (0, 4, 8)]}
    for name, data in {"efficiency": {"base": base, "rows": rows, "params": {"n_forget_texts": 500}},
                       "zeroshot": zeroshot, "latent_ablation": ablation, "static_clamp": static,
                       "relearn": relearn}.items():
        (results / name).mkdir(parents=True)
        (results / name / f"{name}.json").write_text(json.dumps(data))
    written = {p.name for p in render_figures(results, tmp_path / "figures")}
    assert {"efficiency.png", "zeroshot.png", "latent_ablation.png", "pareto.png", "relearning.png"} <= written
    assert "clamp_sweep.png" not in written  # static clamping has multipliers, not DSG clamps
    svg = (tmp_path / "figures" / "relearning.svg").read_text()
    assert all(label in svg for label in ("static clamping", "RMU", "DSG", "32 forget texts"))
    pareto = (tmp_path / "figures" / "pareto.svg").read_text()
    assert "static clamping: front of 2 configs" in pareto  # efficiency and zero-shot rows are not sweeps
    assert "efficiency" not in pareto and "zeroshot" not in pareto
