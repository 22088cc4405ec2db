"""Join what was measured for each SAE candidate into one table (SAEBench-style core metrics + what it does for DSG).

Inputs, per candidate NAME:
- ``<train>/candidates.json``: held-out quality rows written by ``dsg-lens train-sae``;
- ``<demo>/NAME/report.json`` (``dsg-lens demo --sae <train>/NAME --out <demo>/NAME``), optional;
- ``<bench>/NAME.json`` (``dsg-lens bench --sae <train>/NAME --out <bench>/NAME.json``), optional.
Writes ``--out`` (JSON rows) and prints a markdown table. Goals (issue: stronger SAE): EV >= 0.80, CE loss recovered
>= 95%, dead <= 10%, L0 in [20, 80].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _goals(row: dict) -> bool:
    return (row["explained_variance"] >= 0.80 and row["ce_loss_recovered"] >= 0.95 and row["dead_fraction"] <= 0.10
            and 20 <= row["l0"] <= 80)


def _row(quality: dict, demo: Path, bench: Path) -> dict:
    name = quality["name"]
    row = {k: quality[k] for k in ("name", "architecture", "layer", "d_sae", "training_tokens", "explained_variance",
                                   "ce_loss_recovered", "l0", "dead_fraction", "run_wall_s", "n_candidates_in_run")}
    row["meets_goals"] = _goals(row)
    report = demo / name / "report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        row |= {"forget_acc": r["dsg"]["forget_acc"], "retain_acc": r["dsg"]["retain_acc"],
                "forget_ci95": r["dsg"]["forget_ci95"], "retain_ci95": r["dsg"]["retain_ci95"],
                "tau": r["gate"]["tau"],
                "gate_by_shape": {shape: {k: v[k] for k in ("tpr", "fpr")} for shape, v in
                                  r["gate"].get("by_shape", {}).items()}}
    timing = bench / f"{name}.json"
    if timing.is_file():
        variants = json.loads(timing.read_text())["forward"]["variants"]
        row |= {"guard_ratio_to_plain": variants["guard_fired"]["ratio_to_plain"]["median"],
                "guard_hook_share": variants["guard_fired"]["hook_share_of_plain"]}
    return row


def _fmt(value, spec=".2f") -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="dsg-lens train-sae --out folder")
    parser.add_argument("--demo", type=Path, required=True, help="folder of per-candidate demo outputs")
    parser.add_argument("--bench", type=Path, required=True, help="folder of per-candidate bench JSON")
    parser.add_argument("--extra", type=Path, nargs="*", default=[],
                        help="more candidates.json files (e.g. an earlier run) to list in the same table")
    parser.add_argument("--out", type=Path, required=True, help="JSON table to write")
    args = parser.parse_args()
    qualities = [q for path in [args.train / "candidates.json", *args.extra] for q in json.loads(path.read_text())]
    rows = [_row(q, args.demo, args.bench) for q in qualities]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("| candidate | layer | tokens | EV | CE rec. | L0 | dead | goals | hook share | forget / retain acc | "
          "gate TPR/FPR cloze | chat |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shapes = r.get("gate_by_shape", {})
        gate = {s: f"{_fmt(shapes[s]['tpr'])} / {_fmt(shapes[s]['fpr'])}" if s in shapes else "–"
                for s in ("cloze", "chat")}
        acc = f"{_fmt(r.get('forget_acc'), '.3f')} / {_fmt(r.get('retain_acc'), '.3f')}"
        print(f"| {r['name']} | {r['layer']} | {r['training_tokens'] / 1e6:.1f}M | {r['explained_variance']:.3f} | "
              f"{r['ce_loss_recovered']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} | "
              f"{'yes' if r['meets_goals'] else 'no'} | {_fmt(r.get('guard_hook_share'), '.2%')} | {acc} | "
              f"{gate['cloze']} | {gate['chat']} |")


if __name__ == "__main__":
    main()
