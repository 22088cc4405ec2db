"""Visualisation: offline/escaped HTML views, attribution vs exact ablation, figures from synthetic result dicts."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_sae, planted_setup, texts

from dsg_lens import DynamicSAEGuardrail, FeatureSet, PaperGate
from dsg_lens.cli import main as cli_main
from dsg_lens.viz.attribution import attribution_check, attribution_view, latent_attribution, plot_attribution
from dsg_lens.viz.figures import ablation_bars, clamp_sweep, curves, latent_scatter, pareto_plot, rho_histogram
from dsg_lens.viz.html import render_component, safe_json
from dsg_lens.viz.render import render_figures
from dsg_lens.viz.style import color
from dsg_lens.viz.token_views import (
    gate_view,
    latent_activations,
    latent_view,
    latents_view,
    top_examples,
    top_examples_view,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000",
]
EVIL = "</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    return model, sae


def _no_remote_scripts(page: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I), "a script loads from a URL"
    assert "unpkg.com" not in page and "import {" not in page


# ------------------------------------------------------------------------------------------------ HTML views
def test_latent_activations_follow_the_planted_latent(planted):
    model, sae = planted
    found = latent_activations(model, sae, "w1 cat w2 dog w3", [5, 0])
    assert found.tokens[0] == "<bos>" and len(found.tokens) == 6
    fired = (found.acts[:, 0] > 0).tolist()
    assert fired == [False, False, True, False, True, False]  # only the forget words
    assert found.acts[0].abs().sum() == 0  # BOS shown as 0


def test_views_are_self_contained_and_escape_script_tokens(planted, tmp_path):
    model, sae = planted
    guard = DynamicSAEGuardrail(sae, [5], PaperGate(0.1))
    views = {
        "one": latent_view(model, sae, "w1 cat w2 dog", 5),
        "multi": latents_view(model, sae, "w1 cat w2 dog", [5, 0, 1]),
        "gate": gate_view(model, guard, "w1 cat w2 dog"),
        "top": top_examples_view(model, sae, texts(0, 6, True), [5, 0], k=2),
        "evil": render_component("ColoredTokens", tokens=["a", EVIL], values=[0.0, 1.0]),
    }
    for name, view in views.items():
        page = view.save(tmp_path / f"{name}.html").read_text()
        _no_remote_scripts(page)
        assert view._repr_html_() == view.local_src  # inline display uses the bundled script too
        # exactly one closing script tag per component: nothing in the data or bundle closes it early
        assert page.lower().count("</script") == 1, name
    evil_page = (tmp_path / "evil.html").read_text()
    assert EVIL not in evil_page and "\\u0026lt;/script\\u0026gt;\\u0026lt;img src=x" in evil_page
    gate_page = (tmp_path / "gate.html").read_text()
    assert "rho = 0.500" in gate_page and "tau = 0.100" in gate_page and "forget-relevant" in gate_page


def test_safe_json_rejects_nan_and_escapes_html():
    assert "<" not in safe_json({"tokens": ["<b>&</b>", "\u2028"]})
    assert json.loads(safe_json({"tokens": ["<b>&</b>"]})) == {"tokens": ["<b>&</b>"]}
    with pytest.raises(ValueError, match="NaN"):
        safe_json({"values": [math.nan]})


def test_top_examples_rank_forget_texts_first(planted):
    model, sae = planted
    corpus = texts(1, 4, False) + texts(2, 3, True)
    found = top_examples(model, sae, corpus, [5], k=3, window=4)[0]
    assert len(found) == 3 and all(e.value > 0 for e in found)
    assert {e.text_index for e in found} <= {4, 5, 6}  # the forget texts
    assert all(any(w in e.tokens for w in ("cat", "dog", "fox")) for e in found)
    assert all(len(e.tokens) == len(e.acts) <= 4 for e in found)


def test_views_reject_bad_input(planted):
    model, sae = planted
    with pytest.raises(ValueError, match="labels"):
        latents_view(model, sae, "w1 cat", [5, 0], labels=["only one"])
    with pytest.raises(ValueError, match="out of range"):
        latent_view(model, sae, "w1 cat", 10_000)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install -y chromium)")
def test_saved_html_renders_offline_in_headless_chromium(planted, tmp_path):
    model, sae = planted
    view = latent_view(model, sae, "w1 cat w2 dog", 5) + render_component(
        "ColoredTokens", tokens=["zebra", EVIL], values=[0.0, 1.0])
    path = view.save(tmp_path / "view.html")
    profile = tempfile.mkdtemp(dir=tmp_path)
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    assert 'class="colored-tokens"' in rendered  # React ran from the inlined bundle
    for token in ("w1", "cat", "dog", "zebra"):
        assert f">{token}</span>" in rendered
    assert "&lt;/script&gt;&lt;img" in rendered and "<img" not in rendered  # shown as text, not markup


# ------------------------------------------------------------------------------------------------ attribution
@pytest.fixture(scope="module")
def small_decoder_sae():
    """An SAE whose latents move the residual a little, so first-order attribution should be accurate."""
    sae = make_sae("jumprelu", hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.W_dec.mul_(0.05)
    return sae


@pytest.mark.parametrize("guarded", [False, True])
def test_attribution_matches_exact_ablation_for_top_latents(tiny_llama, small_decoder_sae, guarded):
    sae = small_decoder_sae
    guard = DynamicSAEGuardrail(sae, [0, 1, 2], PaperGate(0.0), clamp=2.0) if guarded else None
    check = attribution_check(tiny_llama, sae, "w1 cat w2 dog w3 w4 w7 w9", answer="w5", k=4, guard=guard)
    attr, exact = torch.tensor(check["attribution"]), torch.tensor(check["ablation"])
    assert exact.abs().min() > 1e-3  # the top latents really matter
    assert torch.all(torch.sign(attr) == torch.sign(exact))
    assert torch.allclose(attr, exact, rtol=0.15, atol=2e-3), (attr, exact)


def test_attribution_check_can_fail_far_from_linearity(tiny_llama):
    """The same tolerance rejects the first-order estimate when latents move the residual a lot."""
    sae = make_sae("jumprelu", hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    check = attribution_check(tiny_llama, sae, "w1 cat w2 dog w3 w4 w7 w9", answer="w5", k=4)
    attr, exact = torch.tensor(check["attribution"]), torch.tensor(check["ablation"])
    assert not torch.allclose(attr, exact, rtol=0.15, atol=2e-3)


def test_attribution_shapes(tiny_llama, small_decoder_sae):
    attribution = latent_attribution(tiny_llama, small_decoder_sae, "w1 cat w2 dog", answer="w5")
    assert attribution.tokens == ["<bos>", "w1", "cat", "w2", "dog"]
    assert attribution.per_token.shape == (5, small_decoder_sae.cfg.d_sae)
    assert torch.allclose(attribution.total, attribution.per_token.sum(0))
    top = attribution.top(3)
    assert attribution.total.abs()[top].min() >= attribution.total.abs().topk(3).values.min()
    with torch.no_grad():
        logits = tiny_llama(tiny_llama.to_tokens("w1 cat w2 dog"))
    assert attribution.metric == pytest.approx(float(logits[0, -1, tiny_llama.to_single_token("w5")]), abs=1e-5)


def test_attribution_input_errors(tiny_llama, small_decoder_sae):
    with pytest.raises(ValueError, match="exactly one"):
        latent_attribution(tiny_llama, small_decoder_sae, "w1 cat")
    with pytest.raises(ValueError, match="tokens"):
        latent_attribution(tiny_llama, small_decoder_sae, "w1 cat", answer="w1 w2")


def test_attribution_view_and_bars(tiny_llama, small_decoder_sae, tmp_path):
    sae = small_decoder_sae
    guard = DynamicSAEGuardrail(sae, [0, 1], PaperGate(0.0), clamp=5.0)
    base = latent_attribution(tiny_llama, sae, "w1 cat w2 dog", answer="w5")
    guarded = latent_attribution(tiny_llama, sae, "w1 cat w2 dog", answer="w5", guard=guard)
    assert guarded.guarded and guarded.metric != base.metric
    page = attribution_view(base, k=3).save(tmp_path / "attr.html").read_text()
    _no_remote_scripts(page)
    files = plot_attribution({"base": base, "dsg": guarded}, tmp_path / "attr", k=5,
                             metrics={"base": {"forget_acc": 1.0}})
    assert [p.suffix for p in files] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in files)


# ------------------------------------------------------------------------------------------------ figures
def _sweep(method: str | None = None) -> dict:
    rows = [{"n": n, "clamp": c, "p_ratio": 95, "p_dyn": 95, "tau": 0.1,
             "forget_acc": 0.9 - 0.001 * n * c ** 0.5, "retain_acc": 0.99 - 0.0002 * n * c ** 0.5}
            for n in (10, 20) for c in (10.0, 100.0, 500.0)]
    params = {"method": method} if method else {}
    return {"base": {"forget_acc": 0.95, "retain_acc": 0.99}, "rows": rows, "params": params}


def _results(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps(_sweep()))
    (root / "static").mkdir()
    (root / "static" / "sweep.json").write_text(json.dumps(_sweep("static")))
    gate = {"tau": 0.2, "scores_forget": [0.3, 0.5, 0.25], "scores_retain": [0.0, 0.1, 0.05, 0.21]}
    (root / "report.json").write_text(json.dumps({"gate": gate}))
    forget, retain = torch.rand(64), torch.rand(64)
    forget[3] = 0.0
    FeatureSet([1, 2, 3], "dsg", {"n": 3}, {"forget_score": forget, "retain_score": retain,
                                            "rank_score": forget.clone()}).save(root / "guardrail")
    (root / "relearn.json").write_text(json.dumps({"steps": [0, 5, 10], "methods": {
        "dsg": {"forget_acc": [0.3, 0.4, 0.5]}, "rmu": {"forget_acc": [0.5, 0.7, 0.8]}}}))
    (root / "sequential.json").write_text(json.dumps({"stages": ["a", "+b"], "methods": {
        "dsg": {"forget_acc": [0.3, 0.3], "retain_acc": [0.9, 0.89]}}}))
    (root / "dilution.json").write_text(json.dumps({"filler_tokens": [0, 100, 1600], "methods": {
        "dsg": {"blocked": [0.9, 0.3, 0.0]}, "dsg-window": {"blocked": [0.9, 0.9, 0.85]}}}))
    (root / "ablation.json").write_text(json.dumps({"latents": [1, 2], "effects": {"forget": [0.5, 0.1],
                                                                                    "retain": [0.0, 0.02]}}))
    (root / "transfer").mkdir()
    models = [{"model": name, "mean_resid_norm": norm, "n_forget": 10,
               "fixed": [{"clamp": c, "forget_acc": 0.9, "retain_acc": 1.0} for c in (50.0, 500.0)],
               "relative": [{"clamp": s, "forget_acc": 0.6, "retain_acc": 0.9} for s in (0.1, 1.0)]}
              for name, norm in (("small-model", 110.0), ("big-model", 6400.0))]
    (root / "transfer" / "transfer.json").write_text(json.dumps({"models": models, "table": []}))
    return root


def test_render_figures_draws_every_figure_once(tmp_path):
    results = _results(tmp_path / "results")
    written = render_figures(results, tmp_path / "figures")
    stems = sorted({p.stem for p in written})
    assert stems == sorted(["clamp_sweep_dsg", "clamp_sweep_static", "dilution", "latent_ablation", "latent_scatter",
                            "pareto", "relearning", "rho_hist", "sequential", "transfer"])
    for path in written:
        assert path.is_file() and path.stat().st_size > 1000
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert "<svg" in path.read_text()
    pareto_svg = (tmp_path / "figures" / "pareto.svg").read_text().lower()
    assert "static" in pareto_svg and "dsg" in pareto_svg and "no guardrail" in pareto_svg
    transfer_svg = (tmp_path / "figures" / "transfer.svg").read_text()
    assert "big-model, fixed clamp (norm 6400)" in transfer_svg and "small-model, relative clamp" in transfer_svg


def test_figures_cli(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "sweep.json").write_text(json.dumps(_sweep()))
    (results / "report.json").write_text(json.dumps({"gate": {"tau": 0.1, "scores_forget": [0.2],
                                                              "scores_retain": [0.0]}}))
    cli_main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")])
    assert "pareto.png" in capsys.readouterr().out
    assert (tmp_path / "figs" / "rho_hist.svg").is_file()


def test_figure_functions_check_their_input(tmp_path):
    with pytest.raises(ValueError, match="missing keys"):
        rho_histogram({"tau": 0.1}, tmp_path / "x")
    with pytest.raises(ValueError, match="equal length"):
        latent_scatter({"forget_score": [1.0, 2.0], "retain_score": [1.0], "selected": [0]}, tmp_path / "x")
    with pytest.raises(ValueError, match="x values"):
        curves({"methods": {}}, tmp_path / "x")
    with pytest.raises(ValueError, match="values for"):
        ablation_bars({"latents": [1, 2], "effects": {"forget": [0.1]}}, tmp_path / "x")
    with pytest.raises(ValueError, match="no sweeps"):
        pareto_plot({}, tmp_path / "x")
    with pytest.raises(ValueError, match="does not exist"):
        render_figures(tmp_path / "nothing", tmp_path / "figs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results"):
        render_figures(tmp_path / "empty", tmp_path / "figs")
    assert clamp_sweep(_sweep(), tmp_path / "ok")[0].is_file()


def test_one_colour_per_name():
    assert color("Farrell") == color("static") != color("dsg")
    assert color("forget") != color("retain")
    assert color("some new method") == color("Some New Method")


def test_study_results_are_drawn_through_adapters(tmp_path):
    """relearn.json / sequential.json / attacks.json / compare.json (the studies' own schemas) become figures."""
    import json

    from dsg_lens.viz.render import render_figures

    results = tmp_path / "results"
    for name, data in {
        "relearn": {"curve": [{"step": s, "base_forget_acc": 1.0, "dsg_forget_acc": 0.3 + 0.1 * s,
                               "rmu_forget_acc": 0.5 + 0.1 * s} for s in range(3)], "params": {}},
        "sequential": {"topics": ["a", "b"], "steps": [
            {"step": 0, "added": None, "retain_acc": 1.0, "forget_acc": {"a": 1.0, "b": 1.0}},
            {"step": 1, "added": "a", "retain_acc": 0.99, "forget_acc": {"a": 0.3, "b": 1.0}}], "params": {}},
        "attacks": {"attacks": {"dilution": [
            {"strength": k, "base_acc": 1.0, "guards": {"paper": {"forget_acc": 0.3 + k / 200, "firing_rate": 0.5},
                                                         "window": {"forget_acc": 0.3, "firing_rate": 0.5}}}
            for k in (0, 64, 128)]}},
        "compare": {"order": ["base", "dsg_paper"], "methods": {
            "base": {"forget_acc": 1.0, "retain_acc": 1.0}, "dsg_paper": {"forget_acc": 0.35, "retain_acc": 0.98}}},
    }.items():
        (results / name).mkdir(parents=True)
        (results / name / f"{name}.json").write_text(json.dumps(data))
    written = {p.name for p in render_figures(results, tmp_path / "figures")}
    assert {"relearning.png", "sequential.png", "dilution.png", "pareto.png"} <= written


def test_gate_shape_bars_are_drawn_from_the_study_json(tmp_path):
    from dsg_lens.viz.render import render_figures

    rows = [{"n": 20, "gate": gate, "calibration": "questions", "tau": 0.3,
             "by_shape": {"cloze": {"tpr": 0.4, "fpr": 0.03}, "chat": {"tpr": 0.2, "fpr": 0.01}}}
            for gate in ("paper", "window 32 (min 8)")]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gate_shapes.json").write_text(json.dumps({"params": {}, "rows": rows}))
    written = render_figures(tmp_path / "results", tmp_path / "figures")
    assert {p.name for p in written} == {"gate_shapes.png", "gate_shapes.svg"}
    assert all(p.stat().st_size > 1000 for p in written)
