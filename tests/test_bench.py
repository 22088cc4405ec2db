"""The benchmark runs on a tiny model and returns well-formed numbers (never a timing threshold); the reference
hook it measures agrees with the guardrail's fast path."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import make_sae, planted_setup, texts
from sae_lens import StandardSAE

from dsg_lens.bench import (
    TAU_ALWAYS,
    TAU_NEVER,
    attached_specs,
    bench_evaluation_cost,
    format_report,
    reference_hook_spec,
    run_benchmark,
    sweep_grid,
    with_tau,
)
from dsg_lens.commands import bench as bench_command
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.gate import PaperGate

SMALL = dict(batch=2, seq_len=12, repeats=2, warmup=1, gen_tokens=3, gen_prompt_len=4, stats_batches=1,
             memory_scale=3, progress=False)


def _check_spread(spread):
    assert set(spread) == {"min", "median", "max"}
    assert all(math.isfinite(v) and v > 0 for v in spread.values())
    assert spread["min"] <= spread["median"] <= spread["max"]


@pytest.fixture(scope="module")
def result(tiny_llama):
    return run_benchmark(tiny_llama, make_sae(d_in=16), **SMALL)


def test_benchmark_is_well_formed(result):
    json.dumps(result)  # JSON-ready
    env = result["environment"]
    assert env["device"] == "cpu" and env["model_dtype"] == "torch.float32" and len(env["loadavg_after"]) == 3
    forward = result["forward"]["variants"]
    assert set(forward) == {"plain", "guard_fired", "guard_not_fired", "reference_full_sae", "static_clamp"}
    for name, entry in forward.items():
        _check_spread(entry["seconds"])
        assert len(entry["samples_s"]) == SMALL["repeats"]
        assert entry["tokens_per_s"] == pytest.approx(2 * 12 / entry["seconds"]["median"])
        if name != "plain":
            _check_spread(entry["ratio_to_plain"])
            _check_spread(entry["hook_seconds"])
            assert entry["hook_seconds"]["max"] <= entry["seconds"]["max"]
    generation = result["generation"]["variants"]
    assert set(generation) == {"plain", "guard_fired", "guard_not_fired"}
    for name in ("guard_fired", "guard_not_fired"):
        _check_spread(generation[name]["ratio_to_plain"])
        _check_spread(generation[name]["hook_seconds"])
        assert 0 < generation[name]["hook_share_of_plain"] < generation[name]["ratio_to_plain"]["max"]
    stats = result["stats"]
    _check_spread(stats["speedup_vs_full_forward"])
    assert stats["memory"]["tokens_scaled"] == 3 * stats["memory"]["tokens_1x"] == 3 * 2 * 12


def test_benchmark_checks_forced_gate_outcomes(result):
    checks = result["forward"]["checks"]
    assert checks["not_fired_bit_identical_to_plain"] is True
    assert checks["fast_vs_reference_max_rel_diff"] < 1e-4


def test_report_names_every_variant(result):
    report = format_report(result)
    for name in ("guard_fired", "reference_full_sae", "static_clamp", "collect_latent_stats", "speed-up"):
        assert name in report


def test_parts_can_be_skipped_and_bad_sizes_rejected(tiny_llama):
    sae = make_sae(d_in=16)
    small = {**SMALL, "gen_tokens": 0, "stats_batches": 0}
    out = run_benchmark(tiny_llama, sae, **small)
    assert "generation" not in out and "stats" not in out
    with pytest.raises(ValueError, match="repeats"):
        run_benchmark(tiny_llama, sae, **{**small, "repeats": 0})
    with pytest.raises(ValueError, match="n_ctx"):
        run_benchmark(tiny_llama, sae, **{**small, "seq_len": 10_000})
    with pytest.raises(ValueError, match="sweep_configs"):
        run_benchmark(tiny_llama, sae, **{**small, "eval_questions": 2, "sweep_configs": 7})


def _layer_norm_sae(like):
    """``like``'s weights in a SAELens StandardSAE with run-time layer_norm (decode rescales by the input's std)."""
    cfg = dataclasses.replace(like.cfg, normalize_activations="layer_norm")
    sae = StandardSAE(cfg)
    sae.load_state_dict(like.state_dict())
    return sae.eval()


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk", "layer_norm"])
def test_fast_path_equals_reference_hook(tiny_tokenizer, kind):
    """Guardrail hook (the SAE's adapter) == full encode + decode + error (the reference hook, SAELens's own
    encode/decode), on a planted forget setup; layer_norm: the guardrail's adapter is the fallback."""
    from conftest import make_model

    model = make_model("llama", tiny_tokenizer)
    planted, _ = planted_setup(model)
    if kind in ("standard", "layer_norm"):
        sae = planted if kind == "standard" else _layer_norm_sae(planted)
    else:
        sae = make_sae(kind, hook_name="blocks.0.hook_resid_pre", seed=3)
    ids = [5, 7, 11]
    tokens = model.to_tokens(texts(0, 3, forget=True) + texts(1, 3, forget=False), padding_side="right")
    for tau in (TAU_ALWAYS, 0.3, TAU_NEVER):
        guard = with_tau(DynamicSAEGuardrail(sae, ids, PaperGate(0.0), clamp=50.0), tau)
        with torch.no_grad():
            plain = model(tokens)
            with guard.attached(model):
                fast = model(tokens)
            with attached_specs(model, reference_hook_spec(guard)):
                reference = model(tokens)
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
        if tau == TAU_NEVER:
            assert torch.equal(fast, plain)
        if tau == TAU_ALWAYS and kind in ("standard", "layer_norm"):
            assert not torch.equal(fast, plain)  # the planted latent fires on forget words: the edit is real


def test_command_writes_json_and_prints_table(tiny_llama, tmp_path, capsys, monkeypatch):
    import argparse

    monkeypatch.setattr(bench_command, "_load", lambda args: (tiny_llama, make_sae(d_in=16)))
    parser = argparse.ArgumentParser()
    bench_command.register(parser.add_subparsers())
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench", "--out", str(out), "--batch", "2", "--seq-len", "8", "--repeats", "1",
                              "--warmup", "0", "--gen-tokens", "2", "--stats-batches", "1", "--memory-scale", "2",
                              "--no-progress"])
    args.func(args)
    saved = json.loads(out.read_text())
    assert saved["config"]["seq_len"] == 8 and "forward" in saved
    assert "evaluation" not in saved and args.eval_questions == 0  # the section is off by default
    assert "guard_fired" in capsys.readouterr().out


def test_sweep_grid():
    assert sweep_grid(20) == ([5, 10, 20, 40, 80], [80.0, 90.0, 95.0, 99.0])
    assert sweep_grid(2) == ([5], [80.0, 90.0])
    assert sweep_grid(10) == ([5, 10, 20, 40, 80], [80.0, 90.0])
    for bad in (0, 7, 21, True):
        with pytest.raises(ValueError, match="sweep_configs"):
            sweep_grid(bad)


def test_evaluation_cost_on_the_planted_model(tiny_tokenizer, result):
    """K=4 questions per side, 2 configurations (N the planted scale: 2 latents pass p_ratio), fast and naive sweeps: positive times and ratios, report rows."""
    from conftest import make_model
    from tiny_mcq import word_mcqs, word_texts

    from dsg_lens.gate import WindowGate

    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    ev = bench_evaluation_cost(
        model, sae, word_texts(0, 8, n_forget=3), texts(1, 8, False), texts(2, 8, False),
        word_mcqs(30, 4, True), word_mcqs(31, 4, False), n_values=[1, 2], p_dyn_values=[95.0], n=1,
        make_gate=lambda: WindowGate(window=4, min_tokens=2), naive=True, batch_size=4,
    )
    json.dumps(ev)
    assert ev["questions"] == {"forget": 4, "retain": 4} and ev["grid"]["configs"] == 2
    assert ev["evaluation"]["metrics"]["forget_n"] == 4
    for key in ("evaluation", "sweep_fast", "sweep_naive"):
        assert ev[key]["seconds"] > 0 and ev[key]["ratio_to_evaluation"] > 0
    assert ev["sweep_fast"]["ratio_to_evaluation"] == pytest.approx(ev["sweep_fast"]["seconds"] / ev["evaluation"]["seconds"])
    assert ev["goal"]["met"] == (ev["goal"]["ratio"] <= 2.0)
    report = format_report({**result, "evaluation": ev})
    for row in ("evaluation", "sweep (fast, 2 configs)", "sweep (naive)", "sweep <= 2x one evaluation: "):
        assert row in report
