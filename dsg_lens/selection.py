"""Scoring rules that turn forget/retain :class:`LatentStats` into a :class:`FeatureSet`.

- ``"dsg"`` (default; DSG paper): f_j = (mean forget act_j)^2, r_j = (mean retain act_j)^2 (``statistic="mean_sq"``
  uses mean squared activations instead), ratio_j = f_j / (r_j + 1e-21); keep latents whose ratio is at or above the
  ``p_ratio`` percentile of all ratios; sort the survivors by f_j descending; take the top ``n``.
- ``"farrell"`` (Farrell et al. 2024 / SAEBench static clamping): keep latents whose retain firing frequency is at
  most ``retain_threshold``; rank them by forget firing frequency, descending; take the top ``n``.
Every rule returns its scores for every latent, so they can be plotted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from dsg_lens.artifacts import read_json, read_tensors, require, write_json, write_tensors
from dsg_lens.stats import LatentStats
from dsg_lens.user_warnings import warn_user

RATIO_EPS = 1e-21
FEATURES_SCHEMA = 1


@dataclass
class FeatureSet:
    """Selected latent ids (ranked, best first), the rule and parameters that chose them, and per-latent scores
    (``forget_score``, ``retain_score`` and the rule's ``rank_score``, each [d_sae])."""

    ids: list[int]
    rule: str
    params: dict[str, Any]
    scores: dict[str, Float[Tensor, " d_sae"]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def top(self, n: int) -> FeatureSet:
        """The first ``n`` of the ranked selection (same scores)."""
        if not 1 <= n <= len(self.ids):
            raise ValueError(f"n={n} must be between 1 and the {len(self.ids)} selected features")
        return FeatureSet(self.ids[:n], self.rule, {**self.params, "n": n}, self.scores)

    def save(self, path: str | Path) -> None:
        """Write ``features.safetensors`` (ids + scores) and ``features.json`` into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"ids": torch.tensor(self.ids, dtype=torch.long)}
        tensors.update({f"score.{k}": v for k, v in self.scores.items()})
        write_tensors(folder / "features.safetensors", tensors)
        write_json(folder / "features.json", {"schema_version": FEATURES_SCHEMA, "rule": self.rule, "params": self.params})

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read what :meth:`save` wrote; rejects unknown schema versions, malformed or duplicate ids and scores
        whose length differs from one another."""
        folder = Path(path)
        meta_path, tensor_path = folder / "features.json", folder / "features.safetensors"
        meta = read_json(meta_path, FEATURES_SCHEMA, "feature set")
        tensors = read_tensors(tensor_path, ("ids",), "feature set")
        ids = tensors["ids"]
        if ids.ndim != 1 or ids.dtype != torch.long or ids.numel() == 0:
            raise ValueError(f"{tensor_path}: ids must be a non-empty 1-D int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
        id_list = [int(i) for i in ids.tolist()]
        if min(id_list) < 0 or len(set(id_list)) != len(id_list):
            raise ValueError(f"{tensor_path}: ids must be distinct non-negative latent ids")
        scores = {k.removeprefix("score."): v for k, v in tensors.items() if k.startswith("score.")}
        shapes = {tuple(v.shape) for v in scores.values()}
        if len(shapes) > 1 or any(len(shape) != 1 or shape[0] <= max(id_list) for shape in shapes):
            raise ValueError(f"{tensor_path}: scores must be 1-D [d_sae] covering every id, got shapes {shapes}")
        return cls(id_list, require(meta, "rule", str, meta_path), require(meta, "params", dict, meta_path), scores)


def _check_pair(forget: LatentStats, retain: LatentStats, n: int) -> None:
    if forget.d_sae != retain.d_sae:
        raise ValueError(f"forget stats have d_sae={forget.d_sae} but retain stats have d_sae={retain.d_sae}")
    if forget.hook_name != retain.hook_name:
        raise ValueError(f"forget stats are from {forget.hook_name} but retain stats from {retain.hook_name}")
    if not 1 <= n <= forget.d_sae:
        raise ValueError(f"n={n} must be between 1 and d_sae={forget.d_sae}")
    for name, stats in (("forget", forget), ("retain", retain)):
        if stats.n_tokens == 0:
            raise ValueError(f"{name} stats were collected on zero tokens")
        if not torch.isfinite(stats.act_sum).all():
            raise ValueError(f"{name} stats contain NaN/inf activations")


def _check_percentile(name: str, value: float | int) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"{name}={value} is outside 0-100 (it is a percentile)")


def _take(candidates: Tensor, rank_score: Tensor, n: int, what: str) -> list[int]:
    if candidates.numel() < n:
        raise ValueError(f"only {candidates.numel()} latents pass {what}, fewer than n={n}: lower n or loosen the filter")
    order = torch.argsort(rank_score[candidates], descending=True, stable=True)
    return [int(i) for i in candidates[order][:n]]


DENSE_FREQUENCY = 0.5
"""A latent firing on more than this share of retain tokens is dense: it says nothing about the topic."""


def _warn_dense(ids: list[int], retain: LatentStats) -> None:
    """Warn when selected latents are dense (:data:`DENSE_FREQUENCY`): a gate reading them fires everywhere, so
    calibration pushes tau to its maximum and the guardrail never switches on (DSG silently equals the base)."""
    freq = retain.fire_freq
    dense = [i for i in ids if float(freq[i]) > DENSE_FREQUENCY]
    if dense:
        warn_user(f"{len(dense)} of the {len(ids)} selected latents fire on more than {DENSE_FREQUENCY:.0%} of "
                  f"retain tokens (dense: {dense[:8]}{' ...' if len(dense) > 8 else ''}): a gate reading them "
                  "fires on everything, its calibrated tau ends at the maximum and the guardrail may never "
                  "switch on. The SAE has dense latents: pass latents of your choice, raise p_ratio, or use an "
                  "SAE with fewer dense latents")


def select_dsg(
    forget: LatentStats, retain: LatentStats, n: int = 20, p_ratio: float | int = 95.0, statistic: str = "mean"
) -> FeatureSet:
    """The DSG paper's rule (module docstring)."""
    _check_pair(forget, retain, n)
    _check_percentile("p_ratio", p_ratio)
    if statistic == "mean":
        f, r = forget.mean_act.double().square(), retain.mean_act.double().square()
    elif statistic == "mean_sq":
        f, r = forget.mean_sq_act.double(), retain.mean_sq_act.double()
    else:
        raise ValueError(f"statistic must be 'mean' or 'mean_sq', got {statistic!r}")
    ratio = f / (r + RATIO_EPS)
    threshold = torch.quantile(ratio, p_ratio / 100.0)
    candidates = torch.nonzero(ratio >= threshold).flatten()
    ids = _take(candidates, f, n, f"the p_ratio={p_ratio} percentile filter")
    _warn_dense(ids, retain)
    scores = {"forget_score": f.float(), "retain_score": r.float(), "ratio": ratio.float(), "rank_score": f.float()}
    return FeatureSet(ids, "dsg", {"n": n, "p_ratio": p_ratio, "statistic": statistic}, scores)


def select_farrell(
    forget: LatentStats, retain: LatentStats, n: int = 20, retain_threshold: float | int = 0.01
) -> FeatureSet:
    """Static-clamping rule of Farrell et al. (module docstring)."""
    _check_pair(forget, retain, n)
    if not 0 <= retain_threshold <= 1:
        raise ValueError(f"retain_threshold={retain_threshold} must be a firing frequency in [0, 1]")
    f, r = forget.fire_freq.double(), retain.fire_freq.double()
    candidates = torch.nonzero((r <= retain_threshold) & (f > 0)).flatten()
    ids = _take(candidates, f, n, f"retain firing frequency <= {retain_threshold}")
    scores = {"forget_score": f.float(), "retain_score": r.float(), "rank_score": f.float()}
    return FeatureSet(ids, "farrell", {"n": n, "retain_threshold": retain_threshold}, scores)


SELECTION_RULES: dict[str, Callable[..., FeatureSet]] = {"dsg": select_dsg, "farrell": select_farrell}


def rule_options(rule: str) -> tuple[str, ...]:
    """The options (keyword arguments after the two statistics) that selection rule ``rule`` takes."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {sorted(SELECTION_RULES)}")
    return tuple(list(inspect.signature(SELECTION_RULES[rule]).parameters)[2:])


def select_features(
    forget: LatentStats, retain: LatentStats, n: int = 20, p_ratio: float | int | None = None, rule: str = "dsg",
    **options: Any,
) -> FeatureSet:
    """Select ``n`` forget features with the named rule (``"dsg"`` or ``"farrell"``; see module docstring).

    ``p_ratio`` (default 95) and ``statistic`` are options of ``"dsg"``, ``retain_threshold`` of ``"farrell"``;
    an option the chosen rule does not use is an error (it would be silently ignored otherwise)."""
    accepted = rule_options(rule)
    if p_ratio is not None:
        options = {"p_ratio": p_ratio, **options}
    for name in options:
        if name not in accepted:
            owners = [r for r in SELECTION_RULES if name in rule_options(r)]
            where = f"it is an option of rule {' / '.join(map(repr, owners))}" if owners else "no rule has it"
            takes = ", ".join(f"{o}=" for o in accepted)
            raise ValueError(f"{name}= is not used by selection rule {rule!r} ({where}): rule {rule!r} takes "
                             f"{takes}; drop {name}= or choose the rule that uses it")
    return SELECTION_RULES[rule](forget, retain, n=n, **options)


def as_latent_ids(features: FeatureSet | Sequence[int]) -> list[int]:
    """Latent ids of a FeatureSet or a plain sequence of ints."""
    return list(features.ids) if isinstance(features, FeatureSet) else [int(i) for i in features]
