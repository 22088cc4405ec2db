"""The `dsg-lens` command line as a newcomer meets it: help at once (no torch import), explained options, only
the options a command uses, bad input in one line with exit status 2 before any model loads, figures that never
overwrite a folder by accident, the demo's closing summary, no SAELens warning for the shipped SAE."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dsg_lens import cli
from dsg_lens.config import COMPARE_METHODS, EMBEDDED_MODEL, GATE_KINDS, MODEL_KINDS, PROTOCOLS, PipelineConfig

HEAVY = ("torch", "transformer_lens", "sae_lens", "transformers", "datasets", "matplotlib", "lm_eval")


def _leaves() -> dict[str, object]:
    return {leaf.prog: leaf for leaf in cli._leaf_parsers(cli.build_parser())}


def test_help_is_instant_and_imports_nothing_heavy():
    """Every command's --help, built in a fresh interpreter: under 1 s in all, and none of the heavy libraries
    imported (that is what made it take 11-23 s)."""
    script = (
        "import sys, time\nstart = time.perf_counter()\nfrom dsg_lens import cli\n"
        "parser = cli.build_parser()\nparser.format_help()\n"
        "for leaf in cli._leaf_parsers(parser): leaf.format_help()\n"
        "print(time.perf_counter() - start)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    seconds, heavy = done.stdout.splitlines()
    assert heavy == ""
    assert float(seconds) < 1.0


def test_every_command_has_a_description_and_explained_options():
    listing = cli.build_parser().format_help()
    leaves = _leaves()
    assert len(leaves) >= 14  # demo fit eval sweep lm-eval compare bench figures train-sae + the studies
    for prog, parser in leaves.items():
        name = prog.removeprefix("dsg-lens ").split()[0]
        assert name in listing
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help",):
                assert action.help, f"{prog} {action.option_strings[0]} has no help"
    fit = leaves["dsg-lens fit"].format_help()
    assert "--protocol {chat,lm_eval,completion}" in fit and "--gate {window,prefix,paper,count}" in fit
    for words in ("N: how many SAE latents", "p_ratio:", "p_dyn:", "c: where the guardrail is on"):
        assert words in " ".join(fit.split())


def test_demo_help_shows_the_real_max_questions_default():
    parser = _leaves()["dsg-lens demo"]
    assert parser.parse_args([]).max_questions == 300
    assert "(default: 300)" in " ".join(parser.format_help().split("--max-questions K")[-1].split()[:40])


def _options(prog: str) -> set[str]:
    return {opt for a in _leaves()[prog]._actions for opt in a.option_strings}


def test_commands_offer_only_the_options_they_use():
    assert {"--n", "--p-ratio", "--p-dyn", "--clamp", "--clamp-scale", "--gate", "--forget-corpus"}.isdisjoint(
        _options("dsg-lens eval"))
    assert {"--forget-questions", "--max-questions"}.isdisjoint(_options("dsg-lens fit"))
    assert {"--n", "--p-dyn", "--clamp", "--p-ratio"}.isdisjoint(_options("dsg-lens sweep"))
    assert {"--n-values", "--p-dyn-values", "--clamp-values"} <= _options("dsg-lens sweep")
    assert {"--guardrail", "--protocol", "--max-questions"} <= _options("dsg-lens eval")


def test_config_names_match_the_modules_that_use_them():
    """dsg_lens.config holds the names the parser needs without importing torch; they must be the real ones."""
    from dsg_lens import models, pipeline
    from dsg_lens.baselines import compare
    from dsg_lens.eval import mcq
    from dsg_lens.gate import DEFAULT_GATE, GATES

    assert set(GATE_KINDS) == set(GATES) and PipelineConfig().gate == DEFAULT_GATE
    assert EMBEDDED_MODEL == models.EMBEDDED_MODEL == PipelineConfig().model and MODEL_KINDS == models.KINDS
    assert COMPARE_METHODS == compare.METHODS
    assert mcq.PROTOCOLS is PROTOCOLS and pipeline.PipelineConfig is PipelineConfig


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: bad input must be refused before."""
    import dsg_lens.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(dsg_lens.models, "load_model", refuse)


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, no traceback, no usage block
    return lines[0]


def test_bad_input_is_one_line_before_the_model_loads(capsys, tmp_path, no_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine line"}\n{"text": "broken"\n')
    assert _error(capsys, ["eval", "--forget-questions", str(tmp_path / "missing.jsonl")]).startswith(
        "dsg-lens eval: error: --forget-questions")
    assert f"{bad}, line 2: not valid JSON" in _error(capsys, ["fit", "--out", str(tmp_path / "g"),
                                                                "--forget-corpus", str(bad)])
    assert "no guardrail.json" in _error(capsys, ["eval", "--guardrail", str(tmp_path)])
    assert "--sae nowhere: not an SAELens folder" in _error(capsys, ["fit", "--out", "g", "--sae", "nowhere"])
    assert "p_dyn must be between 0 and 100" in _error(capsys, ["fit", "--out", "g", "--p-dyn", "120"])
    assert _error(capsys, ["eval", "--p-dyn", "95"]) == (
        "dsg-lens eval: error: unrecognized arguments: --p-dyn 95 (see `dsg-lens eval --help`)")
    assert "invalid choice" in _error(capsys, ["eval", "--protocol", "mc"])
    assert "'retain', 'all' or one of ['noun.animal'" in _error(capsys, ["eval", "--retain-questions", "embedded:noun.tree"])


def test_commands_that_cannot_shard_refuse_torchrun(capsys, monkeypatch, no_model):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "under torchrun with several processes use `dsg-lens fit`" in _error(capsys, ["demo", "--out", "x"])


def test_lm_eval_passthrough_help_is_ours(capsys):
    cli.main(["lm-eval", "--help"])
    out = capsys.readouterr().out
    assert "--model dsg --model_args model=smollm2-135m-instruct" in out and "guardrail" in out


def test_figures_never_overwrite_a_folder_unless_forced(capsys, tmp_path, monkeypatch):
    from dsg_lens.viz import render

    def draw(results, out):  # stands in for matplotlib (tests/test_viz.py draws the real figures)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "pareto.png").write_bytes(b"\x89PNG drawn from " + str(results).encode())
        return [Path(out) / "pareto.png"]

    monkeypatch.setattr(render, "render_figures", draw)
    results = tmp_path / "results"
    results.mkdir()
    cli.main(["figures", "--results", str(results)])
    assert (results / "figures" / "pareto.png").is_file()  # default: RESULTS/figures, not ./figures
    cli.main(["figures", "--results", str(results)])  # its own folder: redrawn
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "pareto.png").write_bytes(b"somebody's figure")
    capsys.readouterr()
    assert "pass --force" in _error(capsys, ["figures", "--results", str(results), "--out", str(mine)])
    assert (mine / "pareto.png").read_bytes() == b"somebody's figure"
    cli.main(["figures", "--results", str(results), "--out", str(mine), "--force"])
    assert (mine / "pareto.png").read_bytes().startswith(b"\x89PNG")


def test_demo_summary_names_tau_the_table_and_the_paths(tmp_path):
    from dsg_lens.commands.fit_eval import demo_summary

    metrics = {"forget_acc": 0.743, "forget_ci95": [0.691, 0.789], "forget_n": 300, "retain_acc": 0.977,
               "retain_ci95": [0.953, 0.989], "retain_n": 300}
    report = {"config": {**PipelineConfig().__dict__}, "features": {"tau": 0.375},
              "base": {**metrics, "forget_acc": 1.0, "forget_ci95": [0.987, 1.0]}, "dsg": metrics,
              "timing_s": {"total": 590.0, "fit": 224.0}, "figures": ["a.png", "a.svg"]}
    text = demo_summary(report, tmp_path / "out")
    assert "tau = 0.375" in text and "window gate, N=20" in text
    assert "DSG    0.743 [0.691, 0.789]" in text and "base   1.000 [0.987, 1.000]" in text
    assert f"{tmp_path / 'out' / 'report.json'}" in text and f"{tmp_path / 'out' / 'guardrail'}/" in text
    assert "(2 files)" in text


def test_shipped_sae_loads_without_warnings():
    from dsg_lens.models import load_embedded_sae

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_embedded_sae()
    assert not [w for w in caught if "model_from_pretrained_kwargs" in str(w.message)]


def test_dsg_lens_init_is_lazy_but_complete():
    import dsg_lens

    script = "import sys, dsg_lens\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sae_lens')))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"  # `import dsg_lens` loads nothing heavy ...
    assert all(getattr(dsg_lens, name) is not None for name in dsg_lens.__all__)  # ... yet every name resolves
    assert dsg_lens.interventions.__name__ == "dsg_lens.interventions" and "score_mcq" in dir(dsg_lens)
    with pytest.raises(AttributeError):
        dsg_lens.no_such_name  # noqa: B018


def test_eval_writes_json_and_prints_the_table(monkeypatch, tmp_path, capsys):
    """`dsg-lens eval` end to end with the model loader and scoring replaced (what it prints and writes)."""
    from dsg_lens import pipeline
    from dsg_lens.commands import fit_eval

    metrics = {"forget_acc": 0.5, "forget_ci95": [0.2, 0.8], "forget_n": 4, "retain_acc": 1.0,
               "retain_ci95": [0.5, 1.0], "retain_n": 4}
    monkeypatch.setattr(fit_eval, "_load", lambda cfg, with_sae=True: (object(), None))
    monkeypatch.setattr(pipeline, "base_correct_questions", lambda model, cfg, progress: ([], []))
    monkeypatch.setattr(pipeline, "evaluate_questions", lambda *args: metrics)
    out = tmp_path / "eval.json"
    cli.main(["eval", "--out", str(out), "--quiet"])
    assert json.loads(out.read_text()) == {"guardrail": None, **metrics}
    assert "base   0.500 [0.200, 0.800]" in capsys.readouterr().out
