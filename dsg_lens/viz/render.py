"""Regenerate every figure a results folder has data for (``dsg-lens figures --results DIR --out figures/``).

Results are recognised by their keys (schemas in :mod:`dsg_lens.viz.figures`), in every ``*.json`` under the
folder, plus every saved FeatureSet (``features.json``, e.g. inside a saved guardrail) for the latent scatter:

==========================  ====================================================  ==============================
figure                       drawn from                                            function
==========================  ====================================================  ==============================
``latent_scatter``           a saved FeatureSet (``guardrail/features.*``)         :func:`~.figures.latent_scatter`
``rho_hist``                 ``report.json["gate"]`` (``dsg-lens demo``)            :func:`~.figures.rho_histogram`
``pareto``                   all sweeps together (JSON with ``rows``)              :func:`~.figures.pareto_plot`
``clamp_sweep``              a sweep with more than one clamp value                :func:`~.figures.clamp_sweep`
``relearning``               JSON with ``steps`` + ``methods``                     :func:`~.figures.curves`
``sequential``               JSON with ``stages`` + ``methods``                    :func:`~.figures.curves`
``dilution``                 JSON with ``filler_tokens`` + ``methods``             :func:`~.figures.curves`
``latent_ablation``          JSON with ``latents`` + ``effects``                   :func:`~.figures.ablation_bars`
``gate_shapes``              JSON whose ``rows`` have ``by_shape``                 :func:`~.figures.gate_shape_bars`
``attacks``                  JSON with ``attacks`` + ``retain`` (attack study)     :func:`~.figures.attack_panels`
``efficiency``               JSON whose ``rows`` have ``fraction``                 :func:`~.figures.efficiency_plot`
``zeroshot``                 JSON with ``seed_words`` + ``rows``                   :func:`~.figures.zeroshot_plot`
``transfer``                 JSON whose ``models`` have ``fixed`` + ``relative``  :func:`~.figures.transfer_plot`
==========================  ====================================================  ==============================

A sweep (rows of forget/retain accuracy: DSG's ``sweep.json``, ``static_clamp_sweep.json``, ``rmu_grid.json``) is
named by ``params["method"]`` (else by its folder; a ``sweep.json`` at the top is ``dsg``); efficiency and
zero-shot rows are not sweeps. When one kind of figure has several sources, each file is suffixed with its source
(folder, or the sweep's name).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from dsg_lens.viz.adapters import comparison_sweeps, dilution_curves, relearn_curves, sequential_curves
from dsg_lens.viz.figures import (
    ablation_bars,
    attack_panels,
    clamp_sweep,
    efficiency_plot,
    zeroshot_plot,
    transfer_plot,
    gate_shape_bars,
    curves,
    latent_scatter,
    latent_scores,
    pareto_plot,
    rho_histogram,
)

CURVE_KINDS = {"steps": "relearning", "stages": "sequential", "filler_tokens": "dilution"}

Job = tuple[str, str, Callable[[Path], list[Path]]]
"""(figure kind, source label used when a kind has several sources, drawing function of the output stem)."""


def _sweep_name(data: dict[str, Any], rel: Path) -> str:
    method = data.get("params", {}).get("method") or data.get("method")
    if method:
        return str(method)
    if rel.parent == Path("."):
        return "dsg" if rel.stem == "sweep" else rel.stem
    return rel.parent.name


def _rows_with(data: dict[str, Any], *keys: str) -> bool:
    rows = data.get("rows")
    return isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and all(k in r for k in keys)
                                                         for r in rows)


def _is_efficiency(data: dict[str, Any]) -> bool:
    return _rows_with(data, "fraction", "forget_acc", "retain_acc")


def _is_zeroshot(data: dict[str, Any]) -> bool:
    return "seed_words" in data and _rows_with(data, "tau", "forget_acc", "retain_acc")


def _is_sweep(data: dict[str, Any]) -> bool:
    return _rows_with(data, "forget_acc", "retain_acc") and not (_is_efficiency(data) or _is_zeroshot(data))


def _jobs_for(data: dict[str, Any], rel: Path, sweeps: dict[str, dict[str, Any]]) -> list[Job]:
    jobs: list[Job] = []
    label = _slug(rel)
    if isinstance(data.get("attacks"), dict) and isinstance(data.get("retain"), dict):
        jobs.append(("attacks", label, partial(attack_panels, data)))
    gate = data.get("gate")
    if isinstance(gate, dict) and "scores_forget" in gate:
        jobs.append(("rho_hist", label, partial(rho_histogram, gate)))
    sweeps.update(comparison_sweeps(data) or {})
    if _is_sweep(data):
        name = _sweep_name(data, rel)
        sweeps[name] = data
        if len({r.get("clamp") for r in data["rows"]} - {None}) > 1:
            jobs.append(("clamp_sweep", _slug(Path(name)), partial(clamp_sweep, data)))
    for adapt in (relearn_curves, sequential_curves, dilution_curves):
        data = adapt(data) or data
    for x_key, kind in CURVE_KINDS.items():
        if x_key in data and "methods" in data:
            jobs.append((kind, label, partial(curves, data)))
    rows = data.get("rows")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "by_shape" in r for r in rows):
        jobs.append(("gate_shapes", label, partial(gate_shape_bars, data)))
    if "latents" in data and "effects" in data:
        jobs.append(("latent_ablation", label, partial(ablation_bars, data)))
    if _is_efficiency(data):
        jobs.append(("efficiency", label, partial(efficiency_plot, data)))
    if _is_zeroshot(data):
        jobs.append(("zeroshot", label, partial(zeroshot_plot, data)))
    models = data.get("models")
    if isinstance(models, list) and models and all(isinstance(m, dict) and {"fixed", "relative"} <= set(m)
                                                   for m in models):
        jobs.append(("transfer", label, partial(transfer_plot, data)))
    return jobs


def _slug(rel: Path) -> str:
    """Source label: the file's folder (relative to the results), or its name for files at the top."""
    parts = rel.parent.parts or (rel.stem,)
    return re.sub(r"[^A-Za-z0-9]+", "-", "_".join(parts)).strip("-") or "root"


def render_figures(results_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    """Draw every figure that ``results_dir`` has results for into ``figures_dir`` (PNG + SVG each); returns
    the files written. Raises ValueError when the folder is missing or holds no results at all."""
    results, out = Path(results_dir), Path(figures_dir)
    if not results.is_dir():
        raise ValueError(f"results folder {results} does not exist: run `dsg-lens demo --out {results}` first")
    jobs: list[Job] = []
    sweeps: dict[str, dict[str, Any]] = {}
    for path in sorted(results.rglob("*.json")):
        rel = path.relative_to(results)
        if path.name == "features.json":
            jobs.append(("latent_scatter", _slug(rel), partial(latent_scatter, latent_scores(path.parent))))
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); regenerate it") from err
        if isinstance(data, dict):
            jobs.extend(_jobs_for(data, rel, sweeps))
    if sweeps:
        jobs.append(("pareto", "all", partial(pareto_plot, sweeps, title="forget vs retain accuracy of every swept "
                                                                         "configuration, per method")))
    if not jobs:
        raise ValueError(f"no results in {results} that a figure is drawn from (see dsg_lens.viz.render)")
    counts = Counter(kind for kind, _, _ in jobs)
    written: list[Path] = []
    for kind, label, draw in jobs:
        stem = kind if counts[kind] == 1 else f"{kind}_{label}"
        written.extend(draw(out / stem))
    return written
