"""WindowGate: the causal, dilution-robust gate (fired fraction of the last `window` real tokens)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, planted_setup
from tiny_mcq import filler, word_texts

import dsg_lens as dsg
from dsg_lens.gate import GATES, PaperGate, WindowGate, gate_from_dict


@pytest.fixture(scope="module")
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    return model, sae


def test_scores_by_hand():
    fired = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    real = torch.ones_like(fired)
    real[:, 0] = False  # BOS
    real[1, 4:] = False  # padding: row 1 has 3 real tokens (< window)
    # row 0: 1/1, 2/2, 3/3 while fewer than 4 real tokens have been seen, then windows of 4 (3/4 first);
    # row 1: 1/1, 1/2, 1/3, and it never reaches 4 real tokens
    torch.testing.assert_close(WindowGate(window=4, min_tokens=1).scores(fired, real), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(WindowGate(window=4, min_tokens=3).scores(fired, real), torch.tensor([1.0, 1 / 3]))
    torch.testing.assert_close(WindowGate(window=4, min_tokens=4).scores(fired, real), torch.tensor([3 / 4, -1.0]))
    torch.testing.assert_close(PaperGate().scores(fired, real), torch.tensor([3 / 9, 1 / 3]))


def test_special_tokens_inside_a_window_are_skipped():
    fired = torch.tensor([[1, 0, 1, 0, 0, 0]], dtype=torch.bool)
    real = torch.tensor([[1, 0, 1, 1, 1, 1]], dtype=torch.bool)  # a special token between two fired tokens
    assert float(WindowGate(window=2, min_tokens=2).scores(fired, real)) == 1.0


def test_window_at_least_the_length_equals_the_prefix_gate():
    gen = torch.Generator().manual_seed(0)
    fired, real = torch.rand(6, 20, generator=gen) < 0.3, torch.rand(6, 20, generator=gen) < 0.8
    torch.testing.assert_close(WindowGate(window=20).statistic(fired, real), dsg.PrefixGate().statistic(fired, real))


def test_bad_window_and_round_trip():
    with pytest.raises(ValueError, match="window"):
        WindowGate(window=0)
    assert "window" in GATES
    gate = WindowGate(tau=0.25, window=5)
    assert gate_from_dict(gate.to_dict()) == gate
    assert gate.with_tau(0.5) == WindowGate(0.5, 5)


def test_window_gate_resists_dilution_where_paper_gate_fails(planted, tmp_path):
    model, sae = planted
    calibration, held_out = word_texts(1, 60, n_forget=1), word_texts(2, 60, n_forget=1)
    questions = word_texts(4, 10, n_forget=4)
    diluted = [f"{filler(45)} {q}" for q in questions]
    paper = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, p_dyn=95, clamp=20.0, gate="paper",
                                        progress=False)
    robust = dsg.DynamicSAEGuardrail.fit(
        model, sae, [5], calibration, p_dyn=95, clamp=20.0, gate=WindowGate(window=8, min_tokens=4), progress=False
    )
    assert isinstance(robust.gate, WindowGate) and robust.gate.tau > 0
    # both block the plain questions ...
    assert paper.is_forget(model, questions).all() and robust.is_forget(model, questions).all()
    # ... filler unblocks them under the paper's rho, not under the window gate
    assert paper.is_forget(model, diluted).float().mean() <= 0.2
    assert robust.is_forget(model, diluted).all()
    # retain false positives stay near the calibrated 5% for the robust gate
    assert robust.is_forget(model, held_out).float().mean() <= 0.15
    # the attached robust guardrail edits the diluted question, leaves an untripped retain text bit-identical
    tokens = model.to_tokens(diluted[:1])
    retain_tokens = model.to_tokens(word_texts(3, 1, n_forget=0))
    base, retain_base = model(tokens), model(retain_tokens)
    with robust.attached(model):
        guarded, retain_guarded = model(tokens), model(retain_tokens)
    assert not torch.allclose(guarded, base, atol=1e-3)
    assert torch.equal(retain_guarded, retain_base)
    robust.save(tmp_path / "g")
    loaded = dsg.DynamicSAEGuardrail.load(tmp_path / "g", sae=sae)
    assert loaded.gate == robust.gate


def test_calibration_score_is_each_sequences_largest_statistic():
    """tau at the p-th percentile of these scores switches the guardrail on somewhere in at most (100-p)% of
    retain sequences of the calibration shape."""
    gate = WindowGate(window=2, min_tokens=1)
    fired = torch.tensor([[True, False, False, False, True, True], [False, True, False, False, False, False]])
    real = torch.ones_like(fired)
    assert gate.calibration_scores(fired, real).tolist() == [1.0, 0.5]
    assert PaperGate().calibration_scores(fired, real).tolist() == PaperGate().scores(fired, real).tolist()
