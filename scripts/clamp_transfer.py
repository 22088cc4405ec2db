"""Does DSG's clamp transfer across models? The same pipeline on several models, each with a fixed clamp grid and a
relative clamp grid (``clamp_scale``: c_j = s x mean residual norm / |W_dec[j]|); the README's transfer table.

    OMP_NUM_THREADS=1 python scripts/clamp_transfer.py --out figures/results/transfer \
        --model smollm2-135m-instruct=embedded --model gemma-3-270m=embedded

Per model: one statistics pass, base-correct questions (``--max-questions`` per side, a seeded sample stratified
by subject), tau from the held-out retain questions (default causal window gate), then every fixed clamp and every
relative scale at N / p_ratio / p_dyn (defaults 20 / 95 / 95), only clamped questions re-scored
(:func:`~dsg_lens.eval.sweep.run_question_sweep`). Writes ``<out>/transfer.json``: per model the base accuracy, the
mean residual norm at the SAE's hook (real tokens) and the rows; ``table``: per model the fixed clamp c=500, the
best fixed clamp on this model and on the others (with retain >= --min-retain x base, the smallest clamp whose
forget accuracy's 95% interval holds the lowest one), and the best relative scale of the others. ``--p-ratio``
sets the selection's ratio percentile for every model. Each model's measurement is also written to
``<out>/<model>.json`` and reused by a later run with the same settings (so models can be measured in separate
processes, one core each).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any


def best(rows: list[dict[str, Any]], base_retain: float, min_retain: float) -> dict[str, Any] | None:
    """Among the rows keeping retain >= min_retain x base: the smallest clamp whose forget accuracy cannot be told
    from the lowest one (its 95% interval contains it). Picking the plain minimum would pick noise: past the point
    where the clamp saturates, forget accuracies differ by a question or two. None when no row keeps retain."""
    kept = [r for r in rows if r["retain_acc"] >= min_retain * base_retain]
    if not kept:
        return None
    lowest = min(r["forget_acc"] for r in kept)
    return min((r for r in kept if r["forget_ci95"][0] <= lowest <= r["forget_ci95"][1]), key=lambda r: r["clamp"])


def measure(spec: str, cfg: Any, fixed: list[float], relative: list[float], progress: bool) -> dict[str, Any]:
    from dsg_lens.eval.sweep import run_question_sweep
    from dsg_lens.models import load_model
    from dsg_lens.pipeline import base_correct_questions, calibration_texts, load_sae, load_texts
    from dsg_lens.sae_view import sae_hook_name
    from dsg_lens.stats import collect_latent_stats

    name, sae_spec = spec.split("=", 1)
    cfg = replace(cfg, model=name, sae=sae_spec)
    start = time.perf_counter()
    model = load_model(cfg.model, kind=cfg.model_kind, device=cfg.device)
    sae = load_sae(cfg.sae, device=model.cfg.device, model=cfg.model)
    forget_texts, retain_texts = load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus)
    forget = collect_latent_stats(model, sae, forget_texts, batch_size=cfg.batch_size, progress=progress,
                                  desc=f"{name}: forget statistics")
    retain = collect_latent_stats(model, sae, retain_texts, batch_size=cfg.batch_size, progress=progress,
                                  desc=f"{name}: retain statistics")
    forget_q, retain_q = base_correct_questions(model, cfg, progress)
    calibration = calibration_texts(model, cfg, retain_texts)
    sweeps = {}
    for kind, values in (("fixed", fixed), ("relative", relative)):
        result = run_question_sweep(model, sae, forget, retain, calibration, forget_q, retain_q, cfg.protocol,
                                    n_values=[cfg.n], clamp_values=values, p_ratio_values=[cfg.p_ratio],
                                    p_dyn_values=[cfg.p_dyn], clamp_scale=kind == "relative", gate=cfg.make_gate(),
                                    batch_size=cfg.batch_size, progress=progress)
        sweeps[kind] = result
    return {"model": name, "sae": sae_spec, "hook": sae_hook_name(sae), "d_sae": int(sae.cfg.d_sae),
            "mean_resid_norm": retain.mean_resid_norm, "n_forget": len(forget_q), "n_retain": len(retain_q),
            "base": sweeps["fixed"].base, "fixed": sweeps["fixed"].rows, "relative": sweeps["relative"].rows,
            "seconds": time.perf_counter() - start}


def measured(spec: str, cfg: Any, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """``measure``'s result for ``spec``, read from ``path`` when a run with the same settings and the same SAE
    weights (a retrained SAE behind the same spec is measured again) wrote it."""
    from dsg_lens.pipeline import load_sae
    from dsg_lens.sae_view import sae_fingerprint

    name, sae_spec = spec.split("=", 1)
    sae = load_sae(sae_spec, device="cpu", model=name)
    settings = json.loads(json.dumps({"spec": spec, "sae_sha256": sae_fingerprint(sae, range(sae.cfg.d_sae)),
                                      "config": asdict(cfg), "fixed": args.fixed,
                                      "relative": args.relative}))  # as JSON reads it back (tuples -> lists)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            print(f"reusing {path}")
            return saved["result"]
    result = measure(spec, cfg, args.fixed, args.relative, not args.quiet)
    path.write_text(json.dumps({"settings": settings, "result": result}, indent=2))
    return result


def table(models: list[dict[str, Any]], min_retain: float) -> list[dict[str, Any]]:
    """Per model: c=500, its own best fixed clamp, the others' best fixed clamps and the others' best scale."""
    def pick(rows, clamp):
        return next(r for r in rows if r["clamp"] == clamp)

    own = {m["model"]: {kind: best(m[kind], m["base"]["retain_acc"], min_retain) for kind in ("fixed", "relative")}
           for m in models}
    out = []
    for m in models:
        row = {"model": m["model"], "mean_resid_norm": m["mean_resid_norm"], "entries": []}
        entries = [("fixed c=500", pick(m["fixed"], 500.0))] if any(r["clamp"] == 500.0 for r in m["fixed"]) else []
        entries.append((f"own best fixed c={own[m['model']]['fixed']['clamp']:g}", own[m["model"]]["fixed"])
                       if own[m["model"]]["fixed"] else ("own best fixed: none keeps retain", None))
        for other, picks in own.items():
            if other == m["model"]:
                continue
            for kind, label in (("fixed", "c"), ("relative", "s")):
                if picks[kind] is not None:
                    value = picks[kind]["clamp"]
                    entries.append((f"{other}'s best {kind} {label}={value:g}", pick(m[kind], value)))
        for label, r in entries:
            row["entries"].append({"setting": label, **({k: r[k] for k in ("clamp", "tau", "forget_acc", "forget_ci95",
                                                                           "retain_acc", "retain_ci95")}
                                                      if r else {})})
        out.append(row)
    return out


def main() -> None:
    from dsg_lens.config import PipelineConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SAE",
                        help="a model and its SAE (as --sae: 'embedded', a local SAELens folder); repeat per model")
    parser.add_argument("--fixed", type=float, nargs="+", default=[10.0, 50.0, 500.0, 5000.0, 50000.0])
    parser.add_argument("--relative", type=float, nargs="+", default=[0.1, 0.5, 1.0, 4.4, 10.0])
    parser.add_argument("--max-questions", type=int, default=100)
    parser.add_argument("--p-ratio", type=float, default=95.0, help="DSG's ratio percentile (default 95)")
    parser.add_argument("--min-retain", type=float, default=0.95, help="best: retain >= this x base (default 0.95)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if any("=" not in spec for spec in args.model):
        parser.error("--model takes NAME=SAE, e.g. gemma-3-270m=path/to/sae")
    cfg = PipelineConfig(max_questions=args.max_questions, p_ratio=args.p_ratio)
    args.out.mkdir(parents=True, exist_ok=True)
    models = [measured(spec, cfg, args, args.out / f"{spec.split('=', 1)[0]}.json") for spec in args.model]
    result = {"params": {**asdict(cfg), "fixed": args.fixed, "relative": args.relative,
                         "min_retain": args.min_retain},
              "models": models, "table": table(models, args.min_retain)}
    (args.out / "transfer.json").write_text(json.dumps(result, indent=2))
    for row in result["table"]:
        print(f"{row['model']} (mean residual norm {row['mean_resid_norm']:.0f})")
        for e in row["entries"]:
            print(f"  {e['setting']:<46} forget {e.get('forget_acc', float('nan')):.2f}  "
                  f"retain {e.get('retain_acc', float('nan')):.2f}")
    print(f"written: {args.out / 'transfer.json'}")


if __name__ == "__main__":
    main()
