"""Baselines on tiny models: static clamping, RMU, the cost meter and the side-by-side comparison."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, planted_setup, texts
from tiny_mcq import word_mcqs

from dsg_lens.baselines import RMUConfig, StaticClamp, compare_methods, format_table, measure, rmu_unlearn
from dsg_lens.baselines.best import best_point, best_points
from dsg_lens.baselines.compare import StaticSettings, compare_at_best
from dsg_lens.baselines.rmu_grid import rmu_grid
from dsg_lens.baselines.static_sweep import static_clamp_sweep
from dsg_lens.eval.mcq import score_mcq
from dsg_lens.stats import collect_latent_stats


@pytest.fixture(scope="module")
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    return model, sae


def test_static_clamp_selects_planted_latent_and_edits_only_where_it_fires(planted, tmp_path):
    model, sae = planted
    clamp = StaticClamp.fit(model, sae, texts(10, 12, True), texts(11, 24, False), n=1, multiplier=20.0,
                            progress=False)
    assert clamp.latent_ids == [5]
    f_tok, r_tok = model.to_tokens(texts(12, 2, True)), model.to_tokens(texts(13, 2, False))
    f_base, r_base = model(f_tok), model(r_tok)
    with clamp.attached(model):
        f_clamped, r_clamped = model(f_tok), model(r_tok)
    assert not torch.allclose(f_clamped, f_base, atol=1e-3)
    assert torch.equal(r_clamped, r_base)
    assert torch.equal(model(f_tok), f_base)  # removed on exit
    clamp.save(tmp_path / "s")
    loaded = StaticClamp.load(tmp_path / "s", sae)
    assert loaded.latent_ids == [5] and loaded.multiplier == 20.0 and loaded.features is not None
    with pytest.raises(ValueError, match="multiplier"):
        StaticClamp(sae, [5], multiplier=-1.0)


def test_rmu_moves_forget_activations_and_keeps_retain(tiny_tokenizer):
    model = make_model("gpt2", tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget, retain = texts(20, 16, True), texts(21, 16, False)
    cfg = RMUConfig(layer=1, steering_coef=5.0, alpha=10.0, lr=5e-2, steps=80, batch_size=4, max_len=16)
    result = rmu_unlearn(model, forget, retain, cfg, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the input model is untouched
    assert len(result.log) == 80 and result.control.norm().item() == pytest.approx(5.0, rel=1e-5)
    first, last = result.log[0], result.log[-1]
    assert last["forget_loss"] < 0.5 * first["forget_loss"]
    changed = {k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"blocks.0.mlp.W_out", "blocks.1.mlp.W_out"}  # the reference: down_proj of layers l-2..l only
    tokens = model.to_tokens(texts(22, 4, False))
    with torch.no_grad():
        ref, new = model(tokens, stop_at_layer=2), result.model(tokens, stop_at_layer=2)
        f_tok = model.to_tokens(texts(23, 4, True))
        f_ref, f_new = model(f_tok, stop_at_layer=2), result.model(f_tok, stop_at_layer=2)
    control = result.control
    assert (f_new - control).norm(dim=-1).mean() < (f_ref - control).norm(dim=-1).mean()
    assert (new - ref).norm(dim=-1).mean() < (f_new - f_ref).norm(dim=-1).mean()
    assert all(p.requires_grad for p in result.model.parameters())  # flags restored


def test_rmu_inplace_and_bad_config(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    w_out = model.blocks[0].mlp.W_out.detach().clone()
    cfg = RMUConfig(layer=0, steering_coef=3.0, steps=3, batch_size=2, max_len=8, lr=1e-2)
    result = rmu_unlearn(model, texts(1, 4, True), texts(2, 4, False), cfg, inplace=True, progress=False)
    assert result.model is model and not torch.equal(model.blocks[0].mlp.W_out, w_out)
    with pytest.raises(ValueError, match="layer"):
        rmu_unlearn(model, ["w1"], ["w2"], RMUConfig(layer=5), progress=False)
    with pytest.raises(ValueError, match="update_layers"):
        rmu_unlearn(model, ["w1"], ["w2"], RMUConfig(layer=0, update_layers=(1,)), progress=False)
    with pytest.raises(ValueError, match="alpha"):
        rmu_unlearn(model, ["w1"], ["w2"], RMUConfig(layer=0, alpha=0.0), progress=False)


def test_measure_reports_time_and_memory():
    measured = measure(lambda: torch.ones(4_000_000).sum().item() + sum(range(10**5)))
    assert measured.value == pytest.approx(4_000_000 + sum(range(10**5)))
    assert measured.seconds > 0 and measured.peak_mib >= 0 and measured.memory_kind == "cpu_rss"


def test_compare_methods_runs_every_method_with_the_same_evaluation(planted):
    model, sae = planted
    fq, rq = word_mcqs(30, 6, True), word_mcqs(31, 6, False)
    result = compare_methods(
        model, sae, texts(10, 12, True), texts(11, 24, False), fq, rq, n=1, p_ratio=90, clamp=20.0, window=4,
        min_tokens=1,
        rmu=RMUConfig(layer=0, steering_coef=3.0, steps=2, batch_size=2, max_len=8), batch_size=4, progress=False,
    )
    assert result["order"] == ["base", "static_clamp", "rmu", "dsg_paper", "dsg_window"]
    methods = result["methods"]
    for name in ("static_clamp", "dsg_paper", "dsg_window"):
        # the planted latent never fires on retain questions: SAE methods leave retain answers unchanged
        assert methods[name]["retain_acc"] == methods["base"]["retain_acc"]
        assert methods[name]["features"] == [5]
        assert methods[name]["cost"]["seconds"] > 0
    assert methods["dsg_paper"]["gate"]["tpr"] == 1.0 and methods["dsg_paper"]["gate"]["fpr"] == 0.0
    assert methods["rmu"]["cost"]["seconds"] > 0 and methods["rmu"]["final_losses"]["step"] == 2
    table = format_table(result)
    assert table.count("\n") == 1 + len(result["order"])
    low, high = methods["base"]["forget_ci95"]
    assert f"{methods['base']['forget_acc']:.3f} [{low:.3f}, {high:.3f}]" in table
    with pytest.raises(ValueError, match="unknown methods"):
        compare_methods(model, sae, [], [], fq, rq, methods=["bogus"])


def test_rmu_param_sets_choose_the_trained_weights(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget, retain = texts(24, 8, True), texts(25, 8, False)

    def changed(param_set: str) -> set[str]:
        cfg = RMUConfig(layer=1, update_layers=(1,), steering_coef=3.0, steps=2, batch_size=2, max_len=8, lr=1e-2,
                        param_set=param_set)
        tuned = rmu_unlearn(model, forget, retain, cfg, progress=False).model
        return {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}

    assert changed("w_out") == {"blocks.1.mlp.W_out"}
    mlp = changed("mlp")
    assert {"blocks.1.mlp.W_in", "blocks.1.mlp.W_gate", "blocks.1.mlp.W_out"} <= mlp
    assert all(k.startswith("blocks.1.mlp.") for k in mlp)
    block = changed("block")
    assert any(".attn." in k for k in block) and all(k.startswith("blocks.1.") for k in block)
    with pytest.raises(ValueError, match="param_set"):
        RMUConfig(layer=0, param_set="lora").check(2)


def test_best_point_is_the_lowest_forget_at_enough_retain():
    rows = [{"forget_acc": 0.5, "retain_acc": 0.90}, {"forget_acc": 0.7, "retain_acc": 0.99},
            {"forget_acc": 0.6, "retain_acc": 0.96}, {"forget_acc": 0.6, "retain_acc": 0.97}]
    assert best_point(rows, 0.95) is rows[3]  # 0.6 twice: the higher retain wins
    assert best_point(rows, 0.98) is rows[1]
    assert best_point(rows, 0.5) is rows[0]
    assert best_point(rows, 0.995) is None


def test_static_clamp_sweep_rescoring_equals_rescoring_everything(planted):
    """The fast path (re-score only questions where a selected latent fires at a read position) against the
    reference that re-scores every question under every configuration."""
    model, sae = planted
    forget = collect_latent_stats(model, sae, texts(10, 12, True), progress=False)
    retain = collect_latent_stats(model, sae, texts(11, 24, False), progress=False)
    fq, rq = word_mcqs(30, 6, True), word_mcqs(31, 6, False)
    grid = dict(retain_thresholds=(0.0, 0.5), n_values=(1, 3), multipliers=(5.0, 20.0), batch_size=4,
                progress=False)
    fast = static_clamp_sweep(model, sae, forget, retain, fq, rq, **grid)
    naive = static_clamp_sweep(model, sae, forget, retain, fq, rq, naive=True, **grid)
    keys = ("retain_threshold", "n", "multiplier", "features", "forget_acc", "retain_acc")
    assert [{k: r[k] for k in keys} for r in fast["rows"]] == [{k: r[k] for k in keys} for r in naive["rows"]]
    assert fast["params"]["method"] == "static_clamp" and fast["skipped"] == naive["skipped"]
    first = fast["rows"][0]
    assert first["features"] == [5]  # the only latent that never fires on retain text
    assert first["n_rescored"] < naive["rows"][0]["n_rescored"] == len(fq) + len(rq)
    with StaticClamp(sae, [5], 20.0).attached(model):  # an independent evaluation of one row
        reference = score_mcq(model, fq, batch_size=4, progress=False).accuracy
    assert next(r for r in fast["rows"] if r["features"] == [5] and r["multiplier"] == 20.0)["forget_acc"] == reference
    assert fast["best"] == best_point(fast["rows"], 0.95)


def test_rmu_grid_measures_each_run_and_resumes(tiny_tokenizer, tmp_path):
    model = make_model("gpt2", tiny_tokenizer)
    fq, rq = word_mcqs(32, 4, True), word_mcqs(33, 4, False)
    forget, retain = texts(34, 8, True), texts(35, 8, False)
    configs = [RMUConfig(layer=1, steering_coef=c, steps=2, batch_size=2, max_len=8, lr=1e-2) for c in (2.0, 4.0)]
    first = rmu_grid(model, forget, retain, fq, rq, configs[:1], batch_size=4, out_dir=tmp_path, progress=False)
    assert len(first["rows"]) == 1 and first["rows"][0]["cost"]["seconds"] > 0
    assert first["rows"][0]["steering_coef_used"] == pytest.approx(2.0) and first["rows"][0]["max_len"] == 8
    assert first["rows"][0]["layers_updated"] == [0, 1] and first["params"]["method"] == "rmu"
    tuned = rmu_unlearn(model, forget, retain, configs[0], progress=False).model  # the same seeded run
    assert first["rows"][0]["forget_acc"] == score_mcq(tuned, fq, batch_size=4, progress=False).accuracy
    again = rmu_grid(model, forget, retain, fq, rq, configs, batch_size=4, out_dir=tmp_path, resume=True,
                     progress=False)
    assert len(again["rows"]) == 2 and again["rows"][0] == first["rows"][0]  # the first run is not repeated
    with pytest.raises(ValueError, match="other questions"):
        rmu_grid(model, forget, retain, fq[:2], rq, configs, out_dir=tmp_path, resume=True, progress=False)


def test_compare_at_best_runs_each_method_at_its_best_sweep_point(planted, tmp_path):
    import json

    model, sae = planted
    sweeps = {
        "sweep/sweep.json": {"rows": [
            {"n": 1, "clamp": 20.0, "p_ratio": 90.0, "p_dyn": 95.0, "forget_acc": 0.2, "retain_acc": 0.5},
            {"n": 1, "clamp": 30.0, "p_ratio": 90.0, "p_dyn": 90.0, "forget_acc": 0.4, "retain_acc": 1.0}],
            "params": {"gate": {"kind": "window", "window": 4, "min_tokens": 1}, "clamp_is_relative": False}},
        "static_clamp/static_clamp_sweep.json": {"rows": [
            {"retain_threshold": 0.0, "n": 1, "multiplier": 15.0, "forget_acc": 0.3, "retain_acc": 1.0}]},
        "rmu/rmu_grid.json": {"rows": [
            {"layer": 0, "update_layers": None, "steering_coef": 3.0, "steering_scale": 4.0, "alpha": 10.0,
             "lr": 1e-3, "steps": 2, "batch_size": 2, "max_len": 8, "seed": 0, "param_set": "w_out",
             "forget_acc": 0.9, "retain_acc": 1.0}]},
    }
    for rel, data in sweeps.items():
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text(json.dumps(data))
    points = best_points(tmp_path, min_retain=0.95)
    assert points["dsg_window"]["row"]["clamp"] == 30.0  # the 0.2 row loses retain accuracy
    fq, rq = word_mcqs(30, 6, True), word_mcqs(31, 6, False)
    result = compare_at_best(model, sae, texts(10, 12, True), texts(11, 24, False), fq, rq, points,
                             batch_size=4, progress=False)
    assert result["order"] == ["base", "static_clamp", "rmu", "dsg_window"]
    params = result["params"]
    assert params["static"] == {"n": 1, "retain_threshold": 0.0, "multiplier": 15.0}
    assert (params["n"], params["clamp"], params["p_dyn"], params["window"], params["min_tokens"]) == (1, 30.0, 90.0,
                                                                                                     4, 1)
    assert params["rmu"]["steps"] == 2 and params["rmu"]["alpha"] == 10.0
    assert result["methods"]["static_clamp"]["features"] == [5]
    assert all(result["methods"][m]["cost"]["seconds"] > 0 for m in ("static_clamp", "rmu", "dsg_window"))
    with pytest.raises(ValueError, match="keeps retain"):
        best_points(tmp_path, min_retain=1.01)
    with pytest.raises(ValueError, match="rmu-grid"):
        best_points(tmp_path / "nowhere", min_retain=0.9, methods=["rmu"])


def test_compare_rescoring_equals_scoring_every_question(planted):
    """The SAE methods' re-scoring shortcut against scoring every question with the method attached."""
    model, sae = planted
    fq, rq = word_mcqs(36, 8, True), word_mcqs(37, 8, False)
    kwargs = dict(n=1, p_ratio=90, clamp=20.0, window=4, min_tokens=1, batch_size=4, progress=False,
                  methods=["base", "static_clamp", "dsg_paper", "dsg_window"],
                  static=StaticSettings(n=2, retain_threshold=0.5, multiplier=30.0))
    fast = compare_methods(model, sae, texts(10, 12, True), texts(11, 24, False), fq, rq, **kwargs)
    full = compare_methods(model, sae, texts(10, 12, True), texts(11, 24, False), fq, rq, rescore=False, **kwargs)
    keys = ("forget_acc", "retain_acc", "forget_ci95", "retain_ci95", "features")
    for name in kwargs["methods"]:
        assert {k: fast["methods"][name].get(k) for k in keys} == {k: full["methods"][name].get(k) for k in keys}
    assert fast["params"]["rescore"] and not full["params"]["rescore"]
