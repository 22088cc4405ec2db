"""Overhead benchmark: what the guardrail costs against a plain forward, the reference full-SAE formulation (the
paper's/SAEBench's hook: full encode, clamp, decode + error term) and static clamping
(:func:`~dsg_lens.interventions.static_clamp`); KV-cached generation; and latent statistics against a plain
full forward.

Timings are taken in rounds: every round runs each variant once, in an order rotated per round, so a slow
stretch on a shared machine hits all variants alike. Per variant: min/median/max seconds after ``warmup`` rounds;
per guarded variant: the ratio to the plain forward *of the same round* (min/median/max over rounds) and the time
spent inside the hook itself (timed in place: ``perf_counter`` on CPU, CUDA events on GPU, no added sync).
Inputs are random non-special token ids (the fast path does the same work whatever the tokens); the gate outcome
is forced through ``tau`` (-1: always fired, 1: never fired).

Memory of ``collect_latent_stats``: on CUDA the peak of ``torch.cuda.max_memory_allocated``; on Linux CPU the
peak resident set size (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each
run) minus the RSS before the run, for ``stats_batches`` and ``memory_scale`` x as many batches.

Evaluation and sweep cost (optional, ``eval_questions > 0``; :func:`bench_evaluation_cost`): the unit is one
leak-free evaluation (:func:`~dsg_lens.pipeline.evaluate_questions` of K base-correct forget and retain questions
with a fitted guardrail attached, PMI reference cache cleared first); a sweep of C configurations on the fast
path (:func:`~dsg_lens.eval.sweep.run_question_sweep`) and optionally the naive one (:func:`~dsg_lens.eval.sweep.
run_sweep` with ``evaluate_questions``) are reported as ratios to it. Each is timed once, cache cleared before
each. A sweep's time is its call alone: base scores, PMI references, per-configuration selection and tau
calibration, scans and re-scoring; the latent statistics (computed once, shared by the guardrail and the sweeps)
and the unit guardrail's fit are timed apart and are in no ratio.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.gate import PaperGate, clamp_positions
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.hooks import HookSpec, scoped_hooks
from dsg_lens.interventions import static_clamp
from dsg_lens.real_tokens import special_token_ids
from dsg_lens.sae_adapters import reference_edit
from dsg_lens.sae_view import check_sae_fits_model, sae_architecture
from dsg_lens.stats import collect_latent_stats
from dsg_lens.tracking import token_tracker

BENCH_SCHEMA = 1
TAU_ALWAYS = -1.0  # rho >= 0 > -1: every row trips
TAU_NEVER = 1.0  # rho <= 1: no row trips

Variant = Callable[[], Any]
SpecFactory = Callable[[nn.Module], HookSpec]


# --------------------------------------------------------------------------------------------- timing helpers
class HookTimer:
    """Accumulates the time spent inside wrapped hook functions (CUDA events on GPU: no host sync added)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._cpu_s = 0.0
        self._events: list[tuple[Any, Any]] = []

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(act: Tensor, hook: Any) -> Any:
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(act, hook=hook)
                end.record()
                self._events.append((start, end))
                return out
            start_s = time.perf_counter()
            out = fn(act, hook=hook)
            self._cpu_s += time.perf_counter() - start_s
            return out

        return timed

    def pop_seconds(self) -> float:
        """Hook time since the last call (call after the forward has been synchronised)."""
        total = self._cpu_s + sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
        self._cpu_s, self._events = 0.0, []
        return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rounds(
    variants: dict[str, Variant], device: torch.device, repeats: int, warmup: int, progress: bool, desc: str,
    timers: dict[str, HookTimer] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per variant per kept round, and hook seconds per timed variant; the order rotates per round."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    hook_times: dict[str, list[float]] = {name: [] for name in timers or {}}
    for round_index in tqdm(range(warmup + repeats), desc=desc, disable=not progress):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            start = time.perf_counter()
            variants[name]()
            _sync(device)
            elapsed = time.perf_counter() - start
            hook_s = timers[name].pop_seconds() if timers and name in timers else None
            if round_index >= warmup:
                times[name].append(elapsed)
                if hook_s is not None:
                    hook_times[name].append(hook_s)
    return times, hook_times


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _summarise(
    times: dict[str, list[float]], hook_times: dict[str, list[float]], baseline: str, n_units: int, unit: str
) -> dict[str, Any]:
    """Per variant: seconds (min/median/max), units/s at the median, ratio to ``baseline`` per round, hook share."""
    base = times[baseline]
    out: dict[str, Any] = {}
    for name, samples in times.items():
        entry: dict[str, Any] = {"seconds": _spread(samples), f"{unit}_per_s": n_units / statistics.median(samples)}
        if name != baseline:
            entry["ratio_to_" + baseline] = _spread([t / b for t, b in zip(samples, base)])
        if name in hook_times:
            entry["hook_seconds"] = _spread(hook_times[name])
            entry["hook_share_of_" + baseline] = statistics.median(hook_times[name]) / statistics.median(base)
        entry["samples_s"] = samples
        out[name] = entry
    return out


# ------------------------------------------------------------------------------------------- guard variants
def reference_hook_spec(guard: DynamicSAEGuardrail) -> SpecFactory:
    """The paper's/SAEBench's formulation of ``guard`` as a hook: SAELens's full encode, the guardrail's gate on
    the real tokens of the model's token tracker (the guardrail's own mask), clamp, SAELens's decode + error
    (:func:`~dsg_lens.sae_adapters.reference_edit`, the fallback adapter's formulation; one encode per pass).

    Each pass is judged alone (no KV-cache state): use it on full forwards (a KV-cached continuation raises).
    """

    def factory(model: nn.Module) -> HookSpec:
        hook_name = check_sae_fits_model(model, guard.sae, guard.hook_name)
        sae = guard.sae
        ids = torch.tensor(guard.latent_ids, dtype=torch.long, device=sae.W_dec.device)
        clamped = -guard.clamp_values.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
        tracker = token_tracker(model)

        def reference_hook(resid: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
            context = tracker.context(resid.shape[1])
            if context.start != 0:
                raise RuntimeError("the reference hook judges each pass alone: run full forwards, not KV-cached ones")
            acts = sae.encode(resid)
            fired = (acts.index_select(-1, ids) > 0).any(-1)
            mask = clamp_positions(guard.gate, fired, context.real)
            return reference_edit(sae, resid, guard.latent_ids, mask, clamped, acts=acts)

        return HookSpec(hook_name, reference_hook, label="reference-full-sae", needs_tokens=True)

    return factory


def with_tau(guard: DynamicSAEGuardrail, tau: float) -> DynamicSAEGuardrail:
    """A copy of ``guard`` whose gate threshold is ``tau`` (forces the gate outcome in benchmarks)."""
    forced = copy.copy(guard)
    forced.gate = guard.gate.with_tau(tau)
    return forced


@contextmanager
def attached_specs(model: nn.Module, factory: SpecFactory, timer: HookTimer | None = None) -> Iterator[None]:
    """Attach the spec ``factory(model)`` builds (its hook timed by ``timer``); token tracking comes with specs
    that need it."""
    spec = factory(model)
    if timer is not None:
        spec = dataclasses.replace(spec, fn=timer.wrap(spec.fn))
    with scoped_hooks(model, spec):
        yield


def default_guard(sae: SAE, n_latents: int = 20, seed: int = 0) -> DynamicSAEGuardrail:
    """A guardrail on ``n_latents`` random latents of ``sae`` (the paper's N = 20; clamp 500)."""
    if not 1 <= n_latents <= sae.cfg.d_sae:
        raise ValueError(f"n_latents={n_latents} must be between 1 and the SAE's d_sae={sae.cfg.d_sae}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(int(sae.cfg.d_sae), generator=gen)[:n_latents].sort().values.tolist()
    return DynamicSAEGuardrail(sae, ids, PaperGate(0.0))


def random_sae(d_in: int, d_sae: int, hook_name: str, seed: int = 0) -> SAE:
    """A SAELens StandardSAE with random weights of a real shape (timing only: its latents mean nothing)."""
    torch.manual_seed(seed)
    return StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook_name))).eval()


def random_tokens(model: nn.Module, n: int, pos: int, seed: int = 0) -> Int[Tensor, "n pos"]:
    """Random non-special token ids on the model's device."""
    d_vocab = int(model.cfg.d_vocab)
    allowed = torch.ones(d_vocab, dtype=torch.bool)
    allowed[[i for i in special_token_ids(model) if i < d_vocab]] = False
    choices = allowed.nonzero().squeeze(-1)
    gen = torch.Generator().manual_seed(seed)
    return choices[torch.randint(0, choices.numel(), (n, pos), generator=gen)].to(model.cfg.device)


# ------------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field} missing from /proc/self/status")


def peak_memory_mb(fn: Variant, device: torch.device) -> dict[str, Any]:
    """Peak memory added while ``fn`` runs (module docstring: what is measured where)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"measure": "cuda max_memory_allocated", "before_mb": before / 2**20, "peak_added_mb": (peak - before) / 2**20}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        before = _status_kb("VmRSS")
    except (OSError, ValueError):
        fn()
        return {"measure": "unavailable (needs Linux /proc/self/clear_refs)", "before_mb": None, "peak_added_mb": None}
    fn()
    peak = _status_kb("VmHWM")
    return {"measure": "process peak RSS (VmHWM)", "before_mb": before / 1024, "peak_added_mb": (peak - before) / 1024}


# ---------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(
    model: nn.Module,
    sae: SAE,
    guard: DynamicSAEGuardrail | None = None,
    *,
    batch: int = 8,
    seq_len: int = 256,
    repeats: int = 5,
    warmup: int = 1,
    gen_tokens: int = 32,
    gen_prompt_len: int = 32,
    stats_batches: int = 2,
    memory_scale: int = 10,
    seed: int = 0,
    progress: bool = True,
    eval_questions: int = 0,
    sweep_configs: int = 20,
    naive_sweep: bool = False,
) -> dict[str, Any]:
    """Time the guardrail against its baselines on ``model`` (module docstring); returns a JSON-ready dict.

    ``eval_questions`` > 0 adds the ``"evaluation"`` section (:func:`run_evaluation_bench` on the embedded
    benchmark and corpora: ``eval_questions`` questions per side, ``sweep_configs`` configurations, the naive
    sweep too with ``naive_sweep``); its guardrail is fitted there (not ``guard``).

    ``guard`` defaults to :func:`default_guard` of ``sae``. Forward: ``batch`` x ``seq_len`` tokens. Generation:
    ``batch`` prompts of ``gen_prompt_len`` tokens, ``gen_tokens`` greedy KV-cached tokens (time per generated
    token includes the one prompt pass). Statistics: ``stats_batches`` batches, memory also at ``memory_scale`` x.
    ``gen_tokens=0`` / ``stats_batches=0`` skip those parts.
    """
    for name, value, low in (("batch", batch, 1), ("seq_len", seq_len, 1), ("repeats", repeats, 1),
                             ("warmup", warmup, 0), ("gen_tokens", gen_tokens, 0), ("gen_prompt_len", gen_prompt_len, 1),
                             ("stats_batches", stats_batches, 0), ("memory_scale", memory_scale, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if isinstance(eval_questions, bool) or not isinstance(eval_questions, int) or eval_questions < 0:
        raise ValueError(f"eval_questions={eval_questions!r} must be an integer >= 0")
    if eval_questions:
        sweep_grid(sweep_configs)  # reject a bad grid before the long parts
    if seq_len > model.cfg.n_ctx or gen_prompt_len + gen_tokens > model.cfg.n_ctx:
        raise ValueError(f"seq_len / gen_prompt_len + gen_tokens exceed the model's context n_ctx={model.cfg.n_ctx}")
    guard = guard or default_guard(sae)
    device = torch.device(model.cfg.device)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "schema_version": BENCH_SCHEMA,
        "environment": _environment(model, sae, device),
        "config": {
            "batch": batch, "seq_len": seq_len, "repeats": repeats, "warmup": warmup, "gen_tokens": gen_tokens,
            "gen_prompt_len": gen_prompt_len, "stats_batches": stats_batches, "memory_scale": memory_scale,
            "seed": seed, "hook_name": guard.hook_name, "n_latents": len(guard.latent_ids),
            "sae_architecture": sae_architecture(guard.sae), "d_sae": int(guard.sae.cfg.d_sae),
        },
    }
    fired, quiet = with_tau(guard, TAU_ALWAYS), with_tau(guard, TAU_NEVER)
    with torch.inference_mode():
        result["forward"] = _bench_forward(model, guard, fired, quiet, device, batch, seq_len, repeats, warmup, seed,
                                           progress)
        if gen_tokens:
            result["generation"] = _bench_generation(model, fired, quiet, device, batch, gen_prompt_len, gen_tokens,
                                                     repeats, warmup, seed, progress)
        if stats_batches:
            result["stats"] = _bench_stats(model, sae, device, batch, seq_len, stats_batches, memory_scale, repeats,
                                           warmup, seed, progress)
    if eval_questions:
        result["evaluation"] = run_evaluation_bench(model, sae, eval_questions, sweep_configs, naive=naive_sweep,
                                                    progress=progress)
    result["environment"]["loadavg_before"] = list(load_before)
    result["environment"]["loadavg_after"] = list(os.getloadavg())
    return result


def _environment(model: nn.Module, sae: SAE, device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "model": getattr(model.cfg, "model_name", type(model).__name__),
        "model_dtype": str(model.cfg.dtype),
        "sae_dtype": str(sae.W_dec.dtype),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _bench_forward(
    model: nn.Module, guard: DynamicSAEGuardrail, fired: DynamicSAEGuardrail, quiet: DynamicSAEGuardrail,
    device: torch.device, batch: int, seq_len: int, repeats: int, warmup: int, seed: int, progress: bool,
) -> dict[str, Any]:
    tokens = random_tokens(model, batch, seq_len, seed)
    factories: dict[str, SpecFactory] = {
        "guard_fired": fired.hook_spec,
        "guard_not_fired": quiet.hook_spec,
        "reference_full_sae": reference_hook_spec(fired),
        "static_clamp": lambda model: static_clamp(guard.sae, guard.latent_ids, guard.clamp),
    }
    timers = {name: HookTimer(device) for name in factories}
    checks = _check_outputs(model, tokens, factories)
    variants: dict[str, Variant] = {"plain": lambda: model(tokens)}
    for name, factory in factories.items():
        variants[name] = _run_attached(model, tokens, factory, timers[name])
    times, hook_times = _rounds(variants, device, repeats, warmup, progress, "bench forward", timers)
    summary = _summarise(times, hook_times, "plain", batch * seq_len, "tokens")
    return {"tokens_per_pass": batch * seq_len, "variants": summary, "checks": checks}


def _run_attached(model: nn.Module, tokens: Tensor, factory: SpecFactory, timer: HookTimer | None) -> Variant:
    def run() -> Tensor:
        with attached_specs(model, factory, timer):
            return model(tokens)

    return run


def _check_outputs(model: nn.Module, tokens: Tensor, factories: dict[str, SpecFactory]) -> dict[str, Any]:
    """Sanity of the forced gate outcomes and agreement of the fast path with the reference on these tokens."""
    plain = model(tokens)
    outs = {}
    for name, factory in factories.items():
        with attached_specs(model, factory):
            outs[name] = model(tokens)
    scale = plain.abs().max().clamp(min=1e-12)
    return {
        "not_fired_bit_identical_to_plain": bool(torch.equal(outs["guard_not_fired"], plain)),
        "fired_changes_output": bool(not torch.equal(outs["guard_fired"], plain)),
        "fast_vs_reference_max_rel_diff": float((outs["guard_fired"] - outs["reference_full_sae"]).abs().max() / scale),
    }


def _bench_generation(
    model: nn.Module, fired: DynamicSAEGuardrail, quiet: DynamicSAEGuardrail, device: torch.device, batch: int,
    prompt_len: int, gen_tokens: int, repeats: int, warmup: int, seed: int, progress: bool,
) -> dict[str, Any]:
    prompt = random_tokens(model, batch, prompt_len, seed + 1)

    def generate() -> Tensor:
        return model.generate(
            prompt, max_new_tokens=gen_tokens, do_sample=False, use_past_kv_cache=True, stop_at_eos=False,
            verbose=False, return_type="tokens",
        )

    timers = {"guard_fired": HookTimer(device), "guard_not_fired": HookTimer(device)}

    def guarded(guard: DynamicSAEGuardrail, timer: HookTimer) -> Variant:
        def run() -> Tensor:
            with attached_specs(model, guard.hook_spec, timer):
                return generate()

        return run

    variants = {"plain": generate, **{name: guarded(g, timers[name]) for name, g in (("guard_fired", fired),
                                                                                    ("guard_not_fired", quiet))}}
    times, hook_times = _rounds(variants, device, repeats, warmup, progress, "bench generation", timers)
    summary = _summarise(times, hook_times, "plain", batch * gen_tokens, "generated_tokens")
    for entry in summary.values():
        entry["ms_per_generation_step"] = 1000 * entry["seconds"]["median"] / gen_tokens
    return {"generated_tokens_per_run": batch * gen_tokens, "variants": summary}


def _bench_stats(
    model: nn.Module, sae: SAE, device: torch.device, batch: int, seq_len: int, n_batches: int, memory_scale: int,
    repeats: int, warmup: int, seed: int, progress: bool,
) -> dict[str, Any]:
    tokens = random_tokens(model, batch * n_batches, seq_len, seed + 2)

    def stats(rows: Tensor) -> Variant:
        return lambda: collect_latent_stats(model, sae, rows, batch_size=batch, progress=False)

    def full_forward() -> None:
        for chunk in tokens.split(batch):
            model(chunk)

    variants = {"full_forward": full_forward, "collect_latent_stats": stats(tokens)}
    times, _ = _rounds(variants, device, repeats, warmup, progress, "bench stats")
    summary = _summarise(times, {}, "full_forward", tokens.numel(), "tokens")
    speedup = [f / s for f, s in zip(times["full_forward"], times["collect_latent_stats"])]
    big = random_tokens(model, batch * n_batches * memory_scale, seq_len, seed + 3)
    memory = {
        "tokens_1x": tokens.numel(),
        "tokens_scaled": big.numel(),
        "peak_1x": peak_memory_mb(stats(tokens), device),
        "peak_scaled": peak_memory_mb(stats(big), device),
    }
    return {"variants": summary, "speedup_vs_full_forward": _spread(speedup), "memory": memory}


# ------------------------------------------------------------------------------------ evaluation and sweep cost
SWEEP_N_VALUES = (5, 10, 20, 40, 80)
SWEEP_P_DYN_VALUES = (80.0, 90.0, 95.0, 99.0)
SWEEP_GOAL_RATIO = 2.0  # issue 19: a sweep costs at most 2x one evaluation


def sweep_grid(configs: int) -> tuple[list[int], list[float]]:
    """N and p_dyn values of a ``configs``-point grid: the first of :data:`SWEEP_N_VALUES` x the first of
    :data:`SWEEP_P_DYN_VALUES`, as many p_dyn values as divide ``configs`` (20: 5 N x 4 p_dyn; 2: N=5 x 2 p_dyn)."""
    if not isinstance(configs, bool) and isinstance(configs, int) and configs >= 1:
        for n_p in range(len(SWEEP_P_DYN_VALUES), 0, -1):
            if configs % n_p == 0 and configs // n_p <= len(SWEEP_N_VALUES):
                return list(SWEEP_N_VALUES[: configs // n_p]), list(SWEEP_P_DYN_VALUES[:n_p])
    raise ValueError(f"sweep_configs={configs!r} must be a product a x b with 1 <= a <= {len(SWEEP_P_DYN_VALUES)} "
                     f"p_dyn values and 1 <= b <= {len(SWEEP_N_VALUES)} N values (e.g. 2, 4, 10, 20)")


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def bench_evaluation_cost(
    model: nn.Module,
    sae: SAE,
    forget_texts: Sequence[str],
    retain_texts: Sequence[str],
    calibration: Sequence[str],
    forget_q: Sequence[Any],
    retain_q: Sequence[Any],
    *,
    n_values: Sequence[int],
    p_dyn_values: Sequence[float],
    protocol: str = "completion",
    n: int = 20,
    p_ratio: float = 95.0,
    p_dyn: float = 95.0,
    clamp: float = 500.0,
    make_gate: Callable[[], Any] | None = None,
    naive: bool = False,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """One evaluation (the unit), the fast sweep and optionally the naive sweep on the given data (module
    docstring: what each time includes); returns a JSON-ready dict with the ratios to one evaluation.

    The unit's guardrail: selection (``n``, ``p_ratio``) on statistics of ``forget_texts`` / ``retain_texts``,
    tau at ``p_dyn`` on ``calibration``, ``clamp``, the gate ``make_gate()`` (default: the default gate). The
    sweeps: ``n_values`` x ``p_dyn_values`` at that ``p_ratio`` and ``clamp`` on the same statistics.
    """
    from dsg_lens.eval.mcq import clear_reference_cache
    from dsg_lens.eval.sweep import run_question_sweep, run_sweep
    from dsg_lens.gate import DEFAULT_GATE, make_gate as gate_of
    from dsg_lens.pipeline import evaluate_questions
    from dsg_lens.selection import select_features

    new_gate = make_gate or (lambda: gate_of(DEFAULT_GATE))
    device = torch.device(model.cfg.device)
    forget_q, retain_q, calibration = list(forget_q), list(retain_q), list(calibration)

    def stats() -> tuple[Any, Any]:
        return (collect_latent_stats(model, sae, list(forget_texts), batch_size=batch_size, progress=progress),
                collect_latent_stats(model, sae, list(retain_texts), batch_size=batch_size, progress=progress))

    (forget, retain), stats_s = _timed(stats, device)

    def fit() -> DynamicSAEGuardrail:
        features = select_features(forget, retain, n=n, p_ratio=p_ratio)
        return DynamicSAEGuardrail.fit(model, sae, features, calibration, p_dyn=p_dyn, clamp=clamp, gate=new_gate(),
                                       batch_size=batch_size, progress=progress)

    guard, fit_s = _timed(fit, device)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        return evaluate_questions(m, forget_q, retain_q, protocol, batch_size, progress=False)

    def one_evaluation() -> dict[str, Any]:
        with guard.attached(model):
            return evaluate(model)

    clear_reference_cache(model)
    metrics, eval_s = _timed(one_evaluation, device)
    grid = dict(n_values=list(n_values), clamp_values=[clamp], p_ratio_values=[p_ratio],
                p_dyn_values=list(p_dyn_values), batch_size=batch_size, progress=progress)
    configs = len(grid["n_values"]) * len(grid["p_dyn_values"])
    clear_reference_cache(model)
    fast, fast_s = _timed(lambda: run_question_sweep(model, sae, forget, retain, calibration, forget_q, retain_q,
                                                     protocol, gate=new_gate(), **grid), device)
    out: dict[str, Any] = {
        "questions": {"forget": len(forget_q), "retain": len(retain_q)},
        "texts": {"forget": len(forget_texts), "retain": len(retain_texts), "calibration": len(calibration)},
        "protocol": protocol,
        "guard": {"n": n, "p_ratio": p_ratio, "p_dyn": p_dyn, "clamp": clamp, "tau": float(guard.gate.tau),
                  "gate": type(guard.gate).__name__},
        "grid": {**{k: grid[k] for k in ("n_values", "p_dyn_values", "clamp_values", "p_ratio_values")},
                 "configs": configs},
        "setup_seconds": {"statistics": stats_s, "unit_guardrail_fit": fit_s},
        "evaluation": {"seconds": eval_s, "ratio_to_evaluation": 1.0, "metrics": metrics},
        "sweep_fast": {
            "seconds": fast_s, "ratio_to_evaluation": fast_s / eval_s, "configs": configs,
            "ratio_per_config": fast_s / eval_s / configs,
            "questions_rescored": sum(int(row.get("n_rescored", 0)) for row in fast.rows),
        },
        "includes": {
            "evaluation": "evaluate_questions with the fitted guardrail attached, PMI reference cache cleared",
            "sweep": "the sweep call alone (base scores, PMI references, per configuration selection and tau "
                     "calibration, scans, re-scoring), PMI reference cache cleared; latent statistics excluded",
        },
    }
    if naive:
        clear_reference_cache(model)
        _, naive_s = _timed(lambda: run_sweep(model, sae, forget, retain, calibration, evaluate, gate=new_gate(),
                                              **grid), device)
        out["sweep_naive"] = {"seconds": naive_s, "ratio_to_evaluation": naive_s / eval_s, "configs": configs,
                              "ratio_per_config": naive_s / eval_s / configs,
                              "fast_speedup": naive_s / fast_s}
    ratio = out["sweep_fast"]["ratio_to_evaluation"]
    out["goal"] = {"target_ratio": SWEEP_GOAL_RATIO, "ratio": ratio, "met": bool(ratio <= SWEEP_GOAL_RATIO)}
    return out


def run_evaluation_bench(
    model: nn.Module, sae: SAE, questions: int, configs: int = 20, *, naive: bool = False, corpus_texts: int = 64,
    cfg: Any = None, progress: bool = False,
) -> dict[str, Any]:
    """:func:`bench_evaluation_cost` on the benchmark and corpora of ``cfg`` (default: the embedded ones of
    :class:`~dsg_lens.pipeline.PipelineConfig`): the first ``questions`` base-correct questions per side, the
    first ``corpus_texts`` texts of each corpus, tau calibrated on :func:`~dsg_lens.pipeline.calibration_texts`,
    a :func:`sweep_grid` of ``configs`` configurations."""
    from dsg_lens.pipeline import PipelineConfig, base_correct_questions, calibration_texts, load_texts

    if isinstance(questions, bool) or not isinstance(questions, int) or questions < 1:
        raise ValueError(f"questions={questions!r} must be an integer >= 1")
    n_values, p_dyn_values = sweep_grid(configs)
    cfg = dataclasses.replace(cfg or PipelineConfig(), max_questions=questions)
    forget_texts = load_texts(cfg.forget_corpus)[:corpus_texts]
    retain_texts = load_texts(cfg.retain_corpus)[:corpus_texts]
    forget_q, retain_q = base_correct_questions(model, cfg, progress)
    calibration = calibration_texts(model, cfg, retain_texts)
    out = bench_evaluation_cost(
        model, sae, forget_texts, retain_texts, calibration, forget_q, retain_q, n_values=n_values,
        p_dyn_values=p_dyn_values, protocol=cfg.protocol, n=cfg.n, p_ratio=cfg.p_ratio, p_dyn=cfg.p_dyn,
        clamp=cfg.clamp, make_gate=cfg.make_gate, naive=naive, batch_size=cfg.batch_size, progress=progress,
    )
    out["sources"] = {"forget_questions": cfg.forget_questions, "retain_questions": cfg.retain_questions,
                      "forget_corpus": cfg.forget_corpus, "retain_corpus": cfg.retain_corpus,
                      "calibration": cfg.calibration, "max_questions": questions, "corpus_texts": corpus_texts}
    return out


def format_evaluation(ev: dict[str, Any]) -> list[str]:
    """Report lines of the ``"evaluation"`` section (ratios to one evaluation)."""
    q, g = ev["questions"], ev["grid"]
    lines = [
        "", f"evaluation and sweep cost ({q['forget']} forget + {q['retain']} retain questions, {ev['protocol']}; "
            f"statistics {ev['setup_seconds']['statistics']:.2f} s, excluded)",
        f"{'run':<32}{'seconds':>10}{'x one evaluation':>18}{'per config':>12}",
        f"{'evaluation':<32}{ev['evaluation']['seconds']:>10.3f}{1.0:>18.2f}{'':>12}",
    ]
    rows = [("sweep_fast", f"sweep (fast, {g['configs']} configs)"), ("sweep_naive", "sweep (naive)")]
    for key, label in rows:
        if key in ev:
            e = ev[key]
            lines.append(f"{label:<32}{e['seconds']:>10.3f}{e['ratio_to_evaluation']:>18.2f}"
                         f"{e['ratio_per_config']:>12.3f}")
    goal = ev["goal"]
    lines.append(f"goal: sweep <= {goal['target_ratio']:g}x one evaluation: {'met' if goal['met'] else 'not met'} "
                 f"({goal['ratio']:.2f}x)")
    return lines


# ------------------------------------------------------------------------------------------------- report
def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_benchmark`'s result."""
    env, cfg = result["environment"], result["config"]
    lines = [
        f"dsg-lens bench: {env['model']} on {env['device']} ({env['model_dtype']}, SAE {env['sae_dtype']}), "
        f"torch {env['torch']}, {env['torch_threads']} threads, load {env['loadavg_before'][0]:.1f}",
        f"SAE {cfg['sae_architecture']} d_sae={cfg['d_sae']} at {cfg['hook_name']}, N={cfg['n_latents']}; "
        f"{cfg['repeats']} repeats after {cfg['warmup']} warm-up",
    ]
    sections = [("forward", f"forward {cfg['batch']}x{cfg['seq_len']}", "tokens_per_s", "plain")]
    if "generation" in result:
        sections.append(("generation", f"generation {cfg['batch']}x{cfg['gen_tokens']} (KV cache)",
                         "generated_tokens_per_s", "plain"))
    if "stats" in result:
        sections.append(("stats", "latent statistics", "tokens_per_s", "full_forward"))
    header = f"{'variant':<24}{'median s':>10}{'min s':>9}{'max s':>9}{'units/s':>10}{'ratio med [min-max]':>24}{'hook %':>8}"
    for key, title, rate, baseline in sections:
        lines += ["", title, header]
        for name, entry in result[key]["variants"].items():
            sec = entry["seconds"]
            ratio = entry.get(f"ratio_to_{baseline}")
            ratio_s = f"{ratio['median']:.3f} [{ratio['min']:.3f}-{ratio['max']:.3f}]" if ratio else "1"
            share = entry.get(f"hook_share_of_{baseline}")
            share_s = f"{100 * share:.2f}" if share is not None else ""
            lines.append(f"{name:<24}{sec['median']:>10.3f}{sec['min']:>9.3f}{sec['max']:>9.3f}{entry[rate]:>10.0f}"
                         f"{ratio_s:>24}{share_s:>8}")
    if "forward" in result:
        lines += ["", "checks: " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in result["forward"]["checks"].items())]
    if "stats" in result:
        st = result["stats"]
        mem = st["memory"]
        sp = st["speedup_vs_full_forward"]
        lines.append(f"stats speed-up vs full forward: {sp['median']:.2f}x [{sp['min']:.2f}-{sp['max']:.2f}]")
        if mem["peak_1x"]["peak_added_mb"] is not None:
            lines.append(
                f"stats peak memory added ({mem['peak_1x']['measure']}): {mem['peak_1x']['peak_added_mb']:.0f} MB for "
                f"{mem['tokens_1x']} tokens, {mem['peak_scaled']['peak_added_mb']:.0f} MB for {mem['tokens_scaled']}"
            )
    if "evaluation" in result:
        lines += format_evaluation(result["evaluation"])
    return "\n".join(lines)
