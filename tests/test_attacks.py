"""The attack suite on a tiny planted model with a chat template (issue 17): each attack succeeds against the
paper's rho and a robust gate stops it; the error-term steering is checked against SAELens's own encode.

The planted latent 5 fires exactly on the forget words cat/dog/fox; forget questions hold four of them in 6-12
words; tau of every gate comes from calibration texts with one forget word each (p_dyn 95).
"""

from __future__ import annotations

import json

import pytest
import torch
from chat_helpers import chat_model, chat_tokenizer
from conftest import texts
from tiny_mcq import NEUTRAL, word_mcqs, word_texts

import dsg_lens as dsg
from dsg_lens.data.loaders import MCQ
from dsg_lens.gate import CountGate, PaperGate, PrefixGate, ProbeGate, WindowGate
from dsg_lens.pipeline import question_texts
from dsg_lens.probe import LinearProbe, train_probe
from dsg_lens.studies.attacks import (
    STUDY_GATES,
    attack_study,
    benign_neighbours,
    default_attacks,
    dilute,
    forget_vocabulary,
    split_turns,
    study_gate,
    with_system_prompt,
)
from dsg_lens.studies.error_term import ErrorTermAttack

BENIGN_ACK = " ".join(NEUTRAL[:10])  # a talkative assistant: ten benign words per answer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model, sae = chat_model(chat_tokenizer(tmp_path_factory.mktemp("tok")))
    probe = train_probe(model, texts(10, 40, True), texts(11, 40, False), "blocks.0.hook_resid_pre", max_len=32,
                        progress=False)
    calibration = word_texts(1, 60, n_forget=1)
    gates = {"paper": PaperGate(), "window": WindowGate(window=8, min_tokens=4), "count": CountGate(window=16),
             "count_turn": CountGate(window=None, turn=True), "probe": ProbeGate(probe, window=8, min_tokens=4)}
    guards = {name: dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, clamp=20.0, gate=gate, progress=False)
              for name, gate in gates.items()}
    forget = word_mcqs(40, 8, True)
    retain = [MCQ(id=f"r{i}", question=t, choices=("w1", "w2"), answer=0, context=t, candidates=(" w1", " w2"),
                  neutral_context="w0") for i, t in enumerate(word_texts(41, 8, n_forget=0, length=(10, 12)))]
    return model, sae, guards, forget, retain


def rates(guards, model, questions):
    texts_ = question_texts(list(questions), "completion", model)
    return {name: float(guard.is_forget(model, texts_).float().mean()) for name, guard in guards.items()}


# ------------------------------------------------------------------------------------------------- rewrites
def test_rewrites(world):
    model = world[0]
    q = MCQ(id="q", question="Which word means w1 w2?", choices=("cat", "dog"), answer=1, context="w1 w2 is called",
            candidates=(" a cat", " a dog"), neutral_context="It is called")
    after = dilute(q, "w5 w6", "after")
    assert after.cloze() == ("Which word means w1 w2?\n\nw5 w6\n\nIt is called", q.candidates, "It is called")
    assert dilute(q, "", "after").cloze()[0] == "Which word means w1 w2?\n\nIt is called"
    with pytest.raises(ValueError, match="where"):
        dilute(q, "x", "inside")
    system = with_system_prompt(model, q, "w7 w8").cloze()[0]
    assert system == ("<|im_start|>system\nw7 w8<|im_end|>\n<|im_start|>user\nWhich word means w1 w2?<|im_end|>\n"
                      "<|im_start|>assistant\nIt is called")
    split = split_turns(model, q, 2, ack="w9").cloze()[0]
    assert split == "<|im_start|>user\nw1 w2<|im_end|>\n<|im_start|>assistant\nw9<|im_end|>\nis called"


def test_filler_is_a_stretch_of_the_texts_per_question(world):
    from dsg_lens.studies.attacks import Filler, filler_text

    model = world[0]
    source = " ".join(NEUTRAL)
    filler = Filler(model, [source])
    pieces = {key: filler(5, key) for key in ("q1", "q2", "q3", "q4")}
    assert all(len(piece.split()) == 5 and piece in source for piece in pieces.values())
    assert len(set(pieces.values())) > 1 and filler(5, "q1") == pieces["q1"]  # per question, reproducible
    assert filler(5) == filler_text(model, [source], 5) == " ".join(NEUTRAL[:5]) and filler(0, "q1") == ""
    with pytest.raises(ValueError, match="fewer"):
        filler(100, "q1")


def test_forget_vocabulary_and_benign_neighbours_by_hand():
    forget = ["the cat and the dog", "a cat, a fox", "cat food"]
    retain = ["the house and the car", "a food store", "the cat flap"]
    # size scale 10/9 (retain/forget words); ratios: cat (3 * 10/9 + 1) / 2 = 2.17, dog and fox (10/9 + 1) / 1 = 2.11,
    # the / and / food (in both corpora) below 1.1
    assert forget_vocabulary(forget, retain, min_ratio=2.0, min_count=1) == ["cat", "dog", "fox"]
    assert forget_vocabulary(forget, retain, min_ratio=2.0, min_count=1, top=1) == ["cat"]
    assert forget_vocabulary(forget, retain, min_ratio=2.0, min_count=2) == ["cat"]
    vocab = ["cat", "dog", "fox"]
    questions = [MCQ(id=str(i), question=t, choices=("a", "b"), answer=0)
                 for i, t in enumerate(["What is a dog house?", "What is a car?", "Foxes?"])]
    assert [q.id for q in benign_neighbours(questions, vocab)] == ["0"]  # whole words only: "Foxes" is not "fox"


# ------------------------------------------------------------------- each attack: the paper fails, a gate holds
def test_dilution_before_and_after_unblock_the_paper_gate_not_the_count_gate(world):
    model, _, guards, forget, retain = world
    filler = " ".join((NEUTRAL * 2)[:40])
    clean, before = rates(guards, model, forget), rates(guards, model, [dilute(q, filler) for q in forget])
    after = rates(guards, model, [dilute(q, filler, "after") for q in forget])
    assert all(rate == 1.0 for rate in clean.values())
    assert before["paper"] == after["paper"] == 0.0
    for gate in ("count", "window", "probe"):  # counts and latched windows hold
        assert before[gate] == after[gate] == 1.0
    assert rates(guards, model, [dilute(q, filler) for q in retain])["count"] == 0.0  # the filler itself is benign


def test_split_turns_unblock_the_paper_gate_and_the_latest_turn_count_not_the_window_count(world):
    model, _, guards, forget, retain = world
    split = [split_turns(model, q, 5, ack=BENIGN_ACK) for q in forget]
    got = rates(guards, model, split)
    assert got["paper"] == 0.0 and got["window"] == 0.0
    assert got["count_turn"] < 1.0  # only the latest part of the question counts
    assert got["count"] == 1.0
    assert rates(guards, model, [split_turns(model, q, 5, ack=BENIGN_ACK) for q in retain])["count"] == 0.0


def test_a_long_system_prompt_changes_no_gate(world):
    """The system prompt is not a real token (the deployer's, not the user's): no gate is diluted by it."""
    model, _, guards, forget, _ = world
    system = " ".join((NEUTRAL * 3)[:100])
    chat = rates(guards, model, [with_system_prompt(model, q, "") for q in forget])
    assert rates(guards, model, [with_system_prompt(model, q, system) for q in forget]) == chat
    assert chat["count"] == 1.0


def test_benign_neighbours_trip_the_paper_gate_not_the_count_gate(world):
    """Short benign questions with one forget word: one word in three is a high rho, never a count of two."""
    model, _, guards, _, _ = world
    neighbours = word_texts(50, 8, n_forget=1, length=(3, 4))
    got = {name: float(g.is_forget(model, neighbours).float().mean()) for name, g in guards.items()}
    assert got["paper"] == 1.0 and got["count"] == 0.0 and got["probe"] == 0.0


def test_error_term_steering_evades_the_latent_gates_the_probe_gate_stops_it_unless_adaptive(world):
    model, sae, guards, forget, _ = world
    contexts = question_texts(forget, "completion", model)
    evaded = {}
    for adaptive in (False, True):
        for name, guard in guards.items():
            if adaptive and name != "probe":
                continue
            attack = ErrorTermAttack(guard, evade_probe=adaptive)
            with dsg.scoped_hooks(model, attack.hook_spec(model)):
                evaded[(name, adaptive)] = float(guard.is_forget(model, contexts).float().mean())
            cost = attack.cost()
            assert 0 < cost["mean_rel_norm"] and 0 < cost["edited_share"] <= 1
    assert all(evaded[(name, False)] == 0.0 for name in ("paper", "window", "count", "count_turn"))
    assert evaded[("probe", False)] == 1.0 and evaded[("probe", True)] == 0.0
    with pytest.raises(ValueError, match="no probe"):
        ErrorTermAttack(guards["count"], evade_probe=True)


def test_error_term_steering_against_saelens_encode(world):
    """After the steering, SAELens's own encode has latent 5 at 0 on every real token; special tokens and tokens
    where the latent did not fire are untouched."""
    model, sae, guards, _, _ = world
    attack = ErrorTermAttack(guards["count"])
    tokens = model.to_tokens(["w1 cat w2 dog w3", "w1 w2 fox"])
    name = "blocks.0.hook_resid_pre"
    store = {}
    with dsg.scoped_hooks(model, attack.hook_spec(model), dsg.cache_spec(name, store, key="x", order=100)):
        model(tokens)
    clean = model.run_with_cache(tokens, names_filter=name)[1][name]
    steered = store["x"]
    real = dsg.RealTokenRule.for_model(model).mask(tokens)
    fired = sae.encode(clean)[..., 5] > 0
    assert fired[real].any() and not (sae.encode(steered)[..., 5][real] > 0).any()
    assert torch.equal(steered[~(fired & real)], clean[~(fired & real)])


# --------------------------------------------------------------------------------------- the whole study
def test_attack_study_end_to_end_and_its_figure(world, tmp_path):
    model, sae, guards, forget, retain = world
    study = {"paper": dsg.DynamicSAEGuardrail.fit(model, sae, [5], word_texts(1, 60, n_forget=1), clamp=20.0,
                                                  gate=PrefixGate(min_tokens=4), progress=False),
             "count": guards["count"], "probe": guards["probe"]}
    forget = forget[:4]
    attacks = default_attacks(model, [" ".join(NEUTRAL * 3)], filler_tokens=(0, 40), filler_after=(40,),
                              turns=(5,), ack=BENIGN_ACK, paraphrases=(), system_tokens=(60,))
    neighbours = [MCQ(id=f"n{i}", question=t, choices=("w1", "w2"), answer=0, context=t, candidates=(" w1", " w2"),
                      neutral_context="w0") for i, t in enumerate(word_texts(50, 6, n_forget=1, length=(3, 4)))]
    result = attack_study(model, study, forget, retain, attacks, neighbours=neighbours, neighbour_words=["cat"],
                          error_term=True, batch_size=4, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "attacks.json").read_text()) == result
    assert set(result["attacks"]) == {"dilution", "dilution_after", "split", "system_prompt"}
    dilution = {row["strength"]: row["guards"] for row in result["attacks"]["dilution"]}
    assert dilution[0]["paper"]["firing_rate"] == 1.0 and dilution[40]["paper"]["firing_rate"] <= 0.25
    assert dilution[40]["count"]["firing_rate"] == 1.0 and dilution[40]["count"]["retain_fpr"] == 0.0
    assert result["neighbours"]["n"] == 6 and result["neighbours"]["guards"]["count"]["fpr"] == 0.0
    for name in study:  # retain questions hold no forget word: no false positive, accuracy as without a guardrail
        assert result["retain"][name]["fpr"] == 0.0
        assert result["retain"][name]["retain_acc"] == result["base_retain_acc"]
    latents = result["error_term"]["count"]["latents"]
    assert latents["firing_rate"] == 0.0
    # the gate never switched on under the steering, so the guarded model is the steered model, answer for answer
    assert latents["forget_acc"] == latents["base_acc"]
    assert set(result["error_term"]["probe"]) == {"latents", "adaptive"}
    assert result["error_term"]["probe"]["adaptive"]["firing_rate"] == 0.0
    no_acc = attack_study(model, {"count": guards["count"]}, forget, retain, {"dilution": attacks["dilution"][:1]},
                          measure_accuracy=False, error_term=False, retain_attacked=[], progress=False)
    row = no_acc["attacks"]["dilution"][0]
    assert row["base_acc"] is None and row["guards"]["count"]["forget_acc"] is None
    assert row["guards"]["count"]["retain_fpr"] is None

    from dsg_lens.viz.render import render_figures

    written = {p.name for p in render_figures(tmp_path, tmp_path / "figures")}
    assert {"attacks.png", "attacks.svg"} <= written


def test_study_gates_by_name():
    probe = LinearProbe(torch.ones(4), 0.0, "blocks.0.hook_resid_pre")
    for name in STUDY_GATES:
        gate = study_gate(name, protocol="completion", window=32, min_tokens=8, probe=probe)
        assert gate.causal
    assert isinstance(study_gate("paper", protocol="chat", window=32, min_tokens=8), PaperGate)
    with pytest.raises(ValueError, match="trained probe"):
        study_gate("probe", protocol="completion", window=32, min_tokens=8)
    with pytest.raises(ValueError, match="unknown study gate"):
        study_gate("magic", protocol="completion", window=32, min_tokens=8)


def test_cli_defaults_match_the_study(monkeypatch):
    from dsg_lens.cli import build_parser
    from dsg_lens.studies.attacks import DEFAULT_STUDY_GATES, FILLER_TOKENS, SYSTEM_TOKENS, TURNS

    args = build_parser().parse_args(["study", "attacks", "--out", "o"])
    assert tuple(args.gates) == DEFAULT_STUDY_GATES and tuple(args.filler_tokens) == FILLER_TOKENS
    assert tuple(args.filler_after) == FILLER_TOKENS and tuple(args.turns) == TURNS
    assert tuple(args.system_tokens) == SYSTEM_TOKENS


def test_run_attacks_fits_every_study_gate_on_the_setup(tiny_tokenizer, tmp_path):
    from conftest import make_model, planted_setup
    from tiny_mcq import word_mcqs

    from dsg_lens.pipeline import PipelineConfig
    from dsg_lens.studies import Setup
    from dsg_lens.studies.runners import run_attacks

    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    cfg = PipelineConfig(n=1, p_ratio=90.0, clamp=20.0, batch_size=4, calibration="corpus", window=8, min_tokens=2)
    setup = Setup(model, sae, texts(90, 12, True), texts(91, 24, False), word_mcqs(92, 4, True),
                  word_mcqs(93, 4, False), cfg)
    result = run_attacks(setup, tmp_path, gates=("paper", "count", "count|probe"), filler_tokens=(0, 20),
                         filler_after=(), turns=(2,), system_tokens=(), paraphrases=(), measure_accuracy=False,
                         max_retain_attacked=2, progress=False)
    assert (tmp_path / "attacks.json").is_file()
    assert result["params"]["features"] == [5] and result["params"]["gates"] == ["paper", "count", "count|probe"]
    assert result["params"]["probe"]["hook_name"] == "blocks.0.hook_resid_pre"
    assert result["params"]["n_retain_attacked"] == 2
    assert result["retain"]["paper"]["gate"]["kind"] == "prefix"  # the paper's rho, causal under completion
    assert result["retain"]["count|probe"]["gate"]["kind"] == "any"
    assert set(result["error_term"]["count|probe"]) == {"latents", "adaptive"}
