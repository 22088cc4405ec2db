"""Pipeline plumbing: source names, fit + evaluation on a planted tiny model, CLI wiring."""

from __future__ import annotations

import pytest
from conftest import make_model, make_sae, planted_setup, texts

from dsg_lens.cli import build_parser
from dsg_lens.data.loaders import MCQ
from dsg_lens.pipeline import (
    PipelineConfig,
    evaluate_questions,
    fit_guardrail,
    load_questions,
    load_sae,
    load_texts,
    question_texts,
)


def test_source_names_resolve_to_embedded_data():
    assert len(load_texts("embedded:forget")) > 100
    food = load_questions("embedded:noun.food")
    assert food and {q.subject for q in food} == {"noun.food"}


def test_load_sae_from_folder_and_bad_spec(tmp_path):
    sae = make_sae()
    sae.save_model(str(tmp_path / "sae"))
    loaded = load_sae(str(tmp_path / "sae"))
    assert loaded.cfg.d_sae == sae.cfg.d_sae
    with pytest.raises(ValueError, match="release:sae_id"):
        load_sae("no-such-thing")


def _cloze(i: int, words: list[str], answer: int) -> MCQ:
    return MCQ(id=f"q{i}", question="?", choices=tuple(words), answer=answer,
               context="w1 w2 " + " ".join(words), candidates=tuple(f" {w}" for w in words), neutral_context="w1")


def test_fit_and_evaluate_on_planted_model(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    cfg = PipelineConfig(n=1, p_ratio=90, p_dyn=95, clamp=20.0, batch_size=4, calibration="corpus")
    fitted = fit_guardrail(model, sae, texts(30, 10, True), texts(31, 20, False), cfg, progress=False)
    assert fitted.features.ids == [5] and fitted.seconds > 0
    forget_q = [_cloze(i, ["cat", "dog", "fox", "w5"], i % 4) for i in range(4)]
    retain_q = [_cloze(i + 10, ["w1", "w2", "w3", "w4"], i % 4) for i in range(4)]
    base = evaluate_questions(model, forget_q, retain_q, "completion", 4, progress=False)
    with fitted.guard.attached(model):
        guarded = evaluate_questions(model, forget_q, retain_q, "completion", 4, progress=False)
    assert guarded["retain_acc"] == base["retain_acc"]  # the gate never fires on retain questions
    assert set(base) == {"forget_acc", "forget_ci95", "forget_n", "retain_acc", "retain_ci95", "retain_n"}
    assert question_texts(forget_q, "completion")[0] == forget_q[0].context


@pytest.mark.parametrize("argv", [
    ["demo", "--out", "x", "--n", "5", "--clamp-scale", "2.0"],
    ["fit", "--out", "g", "--sae", "embedded"],
    ["eval", "--guardrail", "g"],
    ["sweep", "--n-values", "5", "10", "--relative"],
])
def test_cli_parses(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_shipped_base_correct_ids_match_the_embedded_model(tmp_path, monkeypatch):
    """The kept ids shipped for the embedded model are found for a freshly loaded model (no scoring needed)."""
    import dsg_lens.eval.mcq as mcq
    from dsg_lens.models import load_model

    model = load_model()
    monkeypatch.setattr(mcq, "score_mcq", lambda *a, **k: pytest.fail("scored instead of using the shipped ids"))
    kept = mcq.base_correct_ids(model, load_questions("embedded:forget"), cache_dir=tmp_path, progress=False)
    assert 300 <= len(kept) <= 700


def test_calibration_questions_are_never_evaluated(tiny_tokenizer, monkeypatch):
    """tau is calibrated on a third of the retain questions; the evaluated retain questions are the rest."""
    import dsg_lens.pipeline as pipeline

    model = make_model("llama", tiny_tokenizer)
    retain = [_cloze(i, ["w1", "w2", "w3", "w4"], i % 4) for i in range(60)]
    monkeypatch.setattr(pipeline, "load_questions", lambda spec: retain)
    monkeypatch.setattr(pipeline, "filter_base_correct", lambda model, questions, *a, **k: list(questions))
    cfg = PipelineConfig(calibration="questions")
    held_out = {q.id for q in retain if pipeline.is_calibration_question(q)}
    assert 10 < len(held_out) < 30
    _, evaluated = pipeline.base_correct_questions(model, cfg, progress=False)
    assert {q.id for q in evaluated} == {q.id for q in retain} - held_out
    texts = pipeline.calibration_texts(model, cfg, ["unused corpus"])
    contexts = {q.context for q in retain if q.id in held_out}
    assert set(texts) == contexts | {"?"}  # cloze contexts + plain questions (no chat template here)
    assert PipelineConfig(calibration="corpus").calibration == "corpus"
    with pytest.raises(ValueError, match="calibration"):
        pipeline.calibration_texts(model, PipelineConfig(calibration="magic"), ["x"])
