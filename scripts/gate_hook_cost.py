"""Cost inside the guardrail hook per gate (issue 17), as a share of a plain forward, on the embedded model.

Each gate guards the shipped SAE's hook with 20 random latents, its threshold forced so the gate is on everywhere
(the clamp and edit run on every fired token: the worst case); the probe has random weights (its cost does not
depend on them). Rounds run every variant once in a rotated order; per variant the median over rounds of the time
inside the hook (``dsg_lens.bench.HookTimer``) divided by the median plain forward, and the median ratio of the
guarded to the plain forward of the same round. Writes ``<out>/gate_hook_cost.json``.

    OMP_NUM_THREADS=1 python scripts/gate_hook_cost.py --out figures/results/gate_hook_cost
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from dsg_lens.bench import TAU_ALWAYS, HookTimer, default_guard, random_tokens, with_tau
from dsg_lens.gate import AnyGate, CountGate, PrefixGate, ProbeGate, WindowGate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.hooks import scoped_hooks
from dsg_lens.models import load_model
from dsg_lens.pipeline import load_sae
from dsg_lens.probe import LinearProbe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures/results/gate_hook_cost")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = load_model("smollm2-135m-instruct")
    sae = load_sae("embedded", device=model.cfg.device)
    base = default_guard(sae)
    probe = LinearProbe(torch.randn(int(sae.cfg.d_in), generator=torch.Generator().manual_seed(0)), 0.0,
                        base.hook_name)
    gates = {
        "prefix (paper rho)": PrefixGate(), "window 32": WindowGate(), "count 32": CountGate(),
        "count latest turn": CountGate(window=None, turn=True),
        "probe mean 16": ProbeGate(probe, window=16, min_tokens=4),
        "probe max 32": ProbeGate(probe, window=32, reduce="max"),
        "count 32 | probe mean 16": AnyGate((CountGate(), ProbeGate(probe, window=16, min_tokens=4))),
    }
    guards = {name: with_tau(DynamicSAEGuardrail(sae, base.latent_ids, gate, clamp=base.clamp), TAU_ALWAYS)
              for name, gate in gates.items()}
    device = torch.device(model.cfg.device)
    tokens = random_tokens(model, args.batch, args.seq_len)
    timers = {name: HookTimer(device) for name in guards}

    def attached(name: str):
        specs = [dataclasses.replace(s, fn=timers[name].wrap(s.fn)) for s in guards[name].hook_specs(model)]
        return scoped_hooks(model, *specs)

    plain_out = model(tokens)
    for name in guards:  # forced on: every guard edits the output
        with attached(name), torch.no_grad():
            assert not torch.equal(model(tokens), plain_out), name
        timers[name].pop_seconds()
    variants = ["plain", *guards]
    times: dict[str, list[float]] = {v: [] for v in variants}
    hook: dict[str, list[float]] = {v: [] for v in guards}
    with torch.no_grad():
        for r in range(args.rounds + 1):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for name in order:
                start = time.perf_counter()
                if name == "plain":
                    model(tokens)
                else:
                    with attached(name):
                        model(tokens)
                elapsed = time.perf_counter() - start
                if r == 0:  # warm-up round
                    if name != "plain":
                        timers[name].pop_seconds()
                    continue
                times[name].append(elapsed)
                if name != "plain":
                    hook[name].append(timers[name].pop_seconds())
    plain = statistics.median(times["plain"])
    rows = {name: {"hook_share_of_forward": statistics.median(hook[name]) / plain,
                   "forward_ratio_median": statistics.median([t / p for t, p in zip(times[name], times["plain"])]),
                   "hook_seconds": hook[name]} for name in guards}
    result = {"params": {"model": "smollm2-135m-instruct", "hook": base.hook_name, "n_latents": len(base.latent_ids),
                         "batch": args.batch, "seq_len": args.seq_len, "rounds": args.rounds,
                         "device": str(device), "threads": torch.get_num_threads(), "load_avg": os.getloadavg()},
              "plain_forward_s": times["plain"], "gates": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate_hook_cost.json").write_text(json.dumps(result, indent=2))
    for name, row in rows.items():
        print(f"{name:26s} hook {100 * row['hook_share_of_forward']:.2f}% of a forward; "
              f"guarded/plain {row['forward_ratio_median']:.3f}")


if __name__ == "__main__":
    main()
