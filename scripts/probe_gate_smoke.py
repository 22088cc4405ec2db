"""Probe gate on the embedded model (issue 17): TPR on clean forget question contexts, FPR on retain questions and
on benign neighbours, and gate rates under dilution / split turns, next to the SAE-latent gates.

The probe reads raw activations at the guardrail's hook (``--hook``, default the shipped SAE's), so its numbers do
not depend on the SAE. The latent gates (paper rho, window, count) use the shipped SAE's features: theirs change
with the SAE. Every gate is evaluated from one scan per input set (latent first-firing ranks + probe logits);
tau = the p_dyn percentile over the held-out retain calibration questions (cloze, plain and chat shapes), as the
pipeline calibrates. Writes ``<out>/probe_gate_smoke.json``.

    OMP_NUM_THREADS=1 python scripts/probe_gate_smoke.py --out figures/results/probe_gate_smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dsg_lens.eval.gate_stats import question_inputs
from dsg_lens.gate import AnyGate, CountGate, PrefixGate, ProbeGate, WindowGate, calibrate_gate
from dsg_lens.models import load_model
from dsg_lens.data.loaders import sample_questions
from dsg_lens.pipeline import PipelineConfig, base_correct_questions, calibration_texts, load_sae, load_texts
from dsg_lens.probe import LinearProbe, auroc, train_probe
from dsg_lens.sae_view import sae_architecture, sae_fingerprint, sae_hook_name
from dsg_lens.scan import scan_first_rank
from dsg_lens.selection import select_features
from dsg_lens.stats import collect_latent_stats
from dsg_lens.studies.attacks import Filler, benign_neighbours, dilute, forget_vocabulary, split_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures/results/probe_gate_smoke")
    parser.add_argument("--hook", default=None, help="probe hook (default: the shipped SAE's hook)")
    parser.add_argument("--probe-tokens", type=int, default=20_000, help="training tokens per side")
    parser.add_argument("--attack-questions", type=int, default=100, help="questions per side under attack")
    parser.add_argument("--filler", type=int, nargs="*", default=[64, 256, 1600])
    parser.add_argument("--filler-corpus", default=None, metavar="SOURCE",
                        help="filler texts (a corpus source; default: the retain corpus)")
    parser.add_argument("--long-questions", type=int, default=20,
                        help="questions per side for filler longer than 256 tokens (slow on a CPU)")
    parser.add_argument("--turns", type=int, nargs="*", default=[2, 3, 5])
    parser.add_argument("--no-latent-gates", action="store_true", help="probe gates only (no SAE statistics)")
    parser.add_argument("--sets", nargs="*", default=None,
                        help="evaluate only the input sets whose name starts with one of these (default: all)")
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = PipelineConfig()
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, device=model.cfg.device, model=cfg.model)
    hook = args.hook or sae_hook_name(sae)
    forget_texts, retain_texts = load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus)
    timing = {}

    def log(stage: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {stage}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "probe.safetensors"
    if saved.is_file():  # the probe of an earlier run (training is seeded: the same probe)
        log("probe loaded")
        meta = json.loads((out / "probe.json").read_text())
        probe = LinearProbe.from_dict(meta, load_file(saved), "probe")
    else:
        log("probe training")
        t = time.perf_counter()
        probe = train_probe(model, forget_texts, retain_texts, hook, max_tokens=args.probe_tokens, progress=False)
        timing["probe_training_s"] = time.perf_counter() - t
        save_file(probe.tensors("probe"), saved)
        (out / "probe.json").write_text(json.dumps(probe.to_dict(), indent=2))

    log("feature selection")
    t = time.perf_counter()
    if args.no_latent_gates:
        ids = [0]  # the probe gates do not read the latents; a scan needs some
    else:
        f_stats = collect_latent_stats(model, sae, forget_texts, batch_size=cfg.batch_size, progress=False)
        r_stats = collect_latent_stats(model, sae, retain_texts, batch_size=cfg.batch_size, progress=False)
        ids = select_features(f_stats, r_stats, n=cfg.n, p_ratio=cfg.p_ratio).ids
    timing["selection_s"] = time.perf_counter() - t

    gates = {f"probe mean {w} (min {m})": ProbeGate(probe, window=w, reduce="mean", min_tokens=m)
             for w, m in ((32, 8), (16, 4), (8, 4))}
    gates |= {f"probe max {w} (min {m})": ProbeGate(probe, window=w, reduce="max", min_tokens=m)
              for w, m in ((32, 8), (8, 4))}
    if not args.no_latent_gates:
        gates |= {"paper rho (prefix, min 8)": PrefixGate(min_tokens=8),
                  "window 32 (min 8)": WindowGate(window=32, min_tokens=8),
                  "count 32": CountGate(window=32), "count 64": CountGate(window=64),
                  "count latest turn": CountGate(window=None, turn=True)}
        gates["window 32 | probe mean 16"] = AnyGate((gates["window 32 (min 8)"], gates["probe mean 16 (min 4)"]))
        gates["count 32 | probe mean 16"] = AnyGate((gates["count 32"], gates["probe mean 16 (min 4)"]))

    def scan(texts):
        return scan_first_rank(model, sae, ids, texts, probe=probe, turn_starts=True, batch_size=cfg.batch_size)

    def padded(s):
        fired, real = s.padded(len(ids))
        return fired, real, s.padded_extras()

    log("calibration")
    t = time.perf_counter()
    calib = padded(scan(calibration_texts(model, cfg, retain_texts)))
    tuned = {name: calibrate_gate(g, calib[0], calib[1], cfg.p_dyn, **{k: calib[2][k] for k in g.needs})
             for name, g in gates.items()}
    forget_q, retain_q = base_correct_questions(model, cfg, progress=False)
    vocabulary = forget_vocabulary(forget_texts, retain_texts)  # ratio >= 10, >= 5 occurrences
    neighbours = benign_neighbours(retain_q, vocabulary)
    sets = {}
    for shape in ("cloze", "plain", "chat"):
        sets[f"forget {shape}"] = question_inputs(model, forget_q, shape)
        sets[f"retain {shape}"] = question_inputs(model, retain_q, shape)
        sets[f"neighbours {shape}"] = question_inputs(model, neighbours, shape)
    k = args.attack_questions
    filler = Filler(model, load_texts(args.filler_corpus) if args.filler_corpus else retain_texts)  # per question
    for n in args.filler:
        m = k if n <= 256 else args.long_questions
        for side, qs in (("forget", sample_questions(forget_q, m)), ("retain", sample_questions(retain_q, m))):
            sets[f"{side} filler before {n}"] = [dilute(q, filler(n, q.id)).cloze()[0] for q in qs]
            sets[f"{side} filler after {n}"] = [dilute(q, filler(n, q.id), "after").cloze()[0] for q in qs]
    for n in args.turns:
        for side, qs in (("forget", sample_questions(forget_q, k)), ("retain", sample_questions(retain_q, k))):
            sets[f"{side} split {n}"] = [split_turns(model, q, n).cloze()[0] for q in qs]
    if args.sets is not None:
        sets = {name: texts for name, texts in sets.items() if name.startswith(tuple(args.sets))}
    subjects = {name: [q.subject for q in (retain_q if name.startswith("retain") else neighbours)]
                for name in sets if name in (f"{side} {shape}" for side in ("retain", "neighbours")
                                             for shape in ("cloze", "plain", "chat"))}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for name, texts in sets.items():
        log(f"scan: {name} ({len(texts)} texts)")
        fired, real, extras = padded(scan(texts))
        scores[name] = {g: tuned[g].scores(fired, real, **{e: extras[e] for e in tuned[g].needs}).float()
                        for g in tuned}
    timing["evaluation_s"] = time.perf_counter() - t

    rows = []
    for name, gate in tuned.items():
        rates = {s: float((scores[s][name] > gate.tau).float().mean()) for s in sets}
        by_subject = {}
        for s, labels in subjects.items():
            on = (scores[s][name] > gate.tau).tolist()
            by_subject[s] = {subj: sum(f for f, lab in zip(on, labels) if lab == subj) / labels.count(subj)
                             for subj in sorted(set(labels))}
        row = {"gate": name, "definition": gate.to_dict(), "rates": rates, "fpr_by_subject": by_subject,
               "auroc": {shape: auroc(scores[f"forget {shape}"][name], scores[f"retain {shape}"][name])
                         for shape in ("cloze", "plain", "chat")
                         if f"forget {shape}" in scores and f"retain {shape}" in scores}}
        row["definition"].get("probe", {}).pop("info", None)
        for g in row["definition"].get("gates", []):
            g.get("probe", {}).pop("info", None)
        rows.append(row)
    result = {
        "params": {"model": cfg.model, "hook": hook, "p_dyn": cfg.p_dyn, "n_features": len(ids),
                   "latent_gates_sae": None if args.no_latent_gates else {
                       "sae": cfg.sae, "hook": sae_hook_name(sae), "architecture": sae_architecture(sae),
                       "fingerprint": sae_fingerprint(sae, ids)},
                   "n_forget": len(forget_q), "n_retain": len(retain_q), "n_neighbours": len(neighbours),
                   "attack_questions": k, "long_filler_questions": args.long_questions,
                   "filler_source": f"{args.filler_corpus or cfg.retain_corpus}, a stretch per question (hash of id)",
                   "calibration": "held-out retain questions: cloze, plain, chat"},
        "probe": probe.info, "vocabulary": vocabulary[:60], "rows": rows,
        "timing_s": {**timing, "total": time.perf_counter() - start},
    }
    (out / "probe_gate_smoke.json").write_text(json.dumps(result, indent=2))
    for row in rows:
        print(row["gate"], {k: round(v, 3) for k, v in row["rates"].items()}, row["auroc"])
    print(json.dumps(result["timing_s"]))


if __name__ == "__main__":
    main()
