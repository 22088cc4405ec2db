"""Sweeps: one scan per p_ratio, rows for every configuration, Pareto front and score by hand."""

from __future__ import annotations

import json
import math

import torch
from conftest import make_model, planted_setup, texts

import dsg_lens as dsg
import dsg_lens.eval.sweep as sweep_module
from dsg_lens.eval.sweep import SweepResult, pareto_front, run_sweep, unlearning_score


def test_pareto_front_by_hand():
    rows = [
        {"id": "a", "forget_acc": 0.2, "retain_acc": 0.99},
        {"id": "b", "forget_acc": 0.3, "retain_acc": 0.99},  # dominated by a
        {"id": "c", "forget_acc": 0.1, "retain_acc": 0.90},
        {"id": "d", "forget_acc": 0.5, "retain_acc": 1.00},
        {"id": "e", "forget_acc": 0.5, "retain_acc": 0.95},  # dominated by d (and a)
    ]
    assert [r["id"] for r in pareto_front(rows)] == ["d", "a", "c"]
    assert unlearning_score(rows, base_retain=1.0) == 0.8  # rows with retain >= .99: a, b, d -> min forget .2
    assert math.isnan(unlearning_score(rows, base_retain=1.0, threshold=1.01))
    base = {"forget_acc": 1.0, "retain_acc": 1.0}
    assert SweepResult(rows, base).to_dict()["score"] == 0.8
    undefined = SweepResult([{"forget_acc": 0.1, "retain_acc": 0.9}], base).to_dict()
    assert undefined["score"] is None and "NaN" not in json.dumps(undefined)  # strict JSON, not NaN


def test_run_sweep_on_planted_feature(tiny_tokenizer, monkeypatch, tmp_path):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    forget_texts, retain_texts = texts(20, 10, True), texts(21, 20, False)
    forget = dsg.collect_latent_stats(model, sae, forget_texts, progress=False)
    retain = dsg.collect_latent_stats(model, sae, retain_texts, progress=False)
    f_tok = model.to_tokens(texts(22, 6, True), padding_side="right")
    r_tok = model.to_tokens(texts(23, 6, False), padding_side="right")
    with torch.no_grad():
        f_ref, r_ref = model(f_tok).argmax(-1), model(r_tok).argmax(-1)

    def evaluate(m):  # agreement of next-token predictions with the unguarded model
        with torch.no_grad():
            return {"forget_acc": float((m(f_tok).argmax(-1) == f_ref).float().mean()),
                    "retain_acc": float((m(r_tok).argmax(-1) == r_ref).float().mean())}

    scans = []
    original = sweep_module.scan_first_rank
    monkeypatch.setattr(sweep_module, "scan_first_rank", lambda *a, **k: scans.append(1) or original(*a, **k))
    result = run_sweep(model, sae, forget, retain, retain_texts, evaluate, n_values=[1, 2], clamp_values=[0.0, 30.0],
                       p_ratio_values=[90.0, 95.0], p_dyn_values=[50.0, 95.0], gate=dsg.WindowGate(min_tokens=1),
                       progress=False)
    assert len(scans) == 2  # one scan per p_ratio, not per configuration
    assert len(result.rows) == 2 * 2 * 2 * 2
    assert result.base == {"forget_acc": 1.0, "retain_acc": 1.0}
    for row in (r for r in result.rows if r["n"] == 1):  # only the planted latent is selected
        assert row["retain_acc"] == 1.0  # it never fires on retain text: bit-identical
        if row["clamp"] == 30.0:
            assert row["forget_acc"] < 1.0  # clamping it changes forget predictions
    assert any(r["retain_acc"] < 1.0 for r in result.rows if r["n"] == 2 and r["p_dyn"] == 50.0)
    kept = [r["forget_acc"] for r in result.rows if r["retain_acc"] >= 0.99 * result.base["retain_acc"]]
    assert result.score() == 1.0 - min(kept)
    result.save(tmp_path)
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 17
    assert result.to_dict()["params"]["gate"]["kind"] == "window"
