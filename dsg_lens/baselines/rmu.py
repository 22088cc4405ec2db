"""RMU (Representation Misdirection for Unlearning; Li et al. 2024, WMDP): the gradient-based baseline.

Fine-tune weights of ``update_layers`` (default: only the MLP output matrices ``mlp.W_out``, the reference code's
``down_proj``; ``param_set="mlp"``: every MLP weight, ``"block"``: every weight of the block) so that the residual
stream after block ``layer``
(``blocks.{layer}.hook_resid_post``) on forget text moves toward ``steering_coef * u`` (``u``: a fixed random unit
vector drawn with ``seed``), while on retain text it stays close to the frozen model's:

    loss = MSE(h_l(forget), c * u) + alpha * MSE(h_l(retain), h_l^frozen(retain))

over real tokens (BOS/EOS/PAD excluded), one forget and one retain batch (sampled with ``seed``) per step, AdamW.
Only blocks up to ``layer`` run (``stop_at_layer``), so a step costs a partial forward/backward. Works on any
device: tensors follow the model. The WMDP paper's settings for zephyr-7b: layer 7, update layers 5-7, c 6.5,
alpha 1200, lr 5e-5; for gemma-2-2b (DSG paper): layer 3, c 400, alpha 100, lr 5e-6. ``steering_coef=None`` uses
``steering_scale`` x the frozen model's mean residual norm at ``layer`` on the retain texts (norms differ a lot
between models, so an absolute value does not transfer). ``max_len=None`` trains on windows of
``min(128, n_ctx)`` tokens (so the defaults work on any model); an explicit ``max_len`` above the model's context
is an error.

:func:`rmu_unlearn` returns a NEW model (a deep copy; the input model is left untouched and used as the frozen
reference) unless ``inplace=True`` (then a frozen copy is made and the input model is updated).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.tokens import TextsOrTokens, TokenBatch, iter_batches, to_sequences


DEFAULT_TRAINING_LEN = 128
"""Tokens per training window when ``max_len`` is not given (clipped to the model's context)."""


def training_window(max_len: int | None, n_ctx: int, default: int = DEFAULT_TRAINING_LEN) -> int:
    """Tokens per training window: ``max_len`` if given (it must fit the model's context ``n_ctx``), else
    ``min(default, n_ctx)``. Shared by RMU and the relearning study's fine-tuning."""
    if max_len is None:
        return min(default, int(n_ctx))
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len={max_len!r} must be a positive int (or None for min({default}, n_ctx))")
    if max_len > n_ctx:
        raise ValueError(f"max_len={max_len} is longer than the model's context n_ctx={n_ctx}: pass at most "
                         f"{n_ctx}, or leave max_len=None (= min({default}, n_ctx))")
    return max_len


PARAM_SETS: dict[str, str] = {
    "w_out": "mlp.W_out of each update layer (the WMDP reference's down_proj: its default param_ids)",
    "mlp": "every MLP weight of each update layer",
    "block": "every weight of each update layer (attention, MLP, norms)",
}
"""Which weights of the update layers RMU trains."""


def trained_parameters(model: nn.Module, layers: tuple[int, ...], param_set: str) -> list[nn.Parameter]:
    """The parameters RMU trains: ``param_set`` (:data:`PARAM_SETS`) of blocks ``layers``."""
    if param_set not in PARAM_SETS:
        raise ValueError(f"param_set={param_set!r}: use one of {sorted(PARAM_SETS)}")
    out: list[nn.Parameter] = []
    for i in layers:
        block = model.blocks[i]
        if param_set == "w_out":
            out.append(block.mlp.W_out)
        else:
            out.extend((block.mlp if param_set == "mlp" else block).parameters())
    return out


@dataclass
class RMUConfig:
    """RMU settings (module docstring). ``update_layers=None``: ``layer-2 .. layer`` (those that exist);
    ``max_len=None``: ``min(128, n_ctx)`` tokens per training window; ``param_set``: which weights of those
    layers are trained (:data:`PARAM_SETS`; default ``"w_out"``, the WMDP reference)."""

    layer: int = 6
    update_layers: tuple[int, ...] | None = None
    steering_coef: float | None = None
    steering_scale: float = 4.0
    alpha: float = 100.0
    lr: float = 5e-5
    steps: int = 100
    batch_size: int = 4
    max_len: int | None = None
    seed: int = 0
    param_set: str = "w_out"

    def layers_to_update(self) -> tuple[int, ...]:
        if self.update_layers is not None:
            return tuple(self.update_layers)
        return tuple(range(max(0, self.layer - 2), self.layer + 1))

    def window_len(self, n_ctx: int) -> int:
        """Tokens per training window on a model with context ``n_ctx`` (``max_len``, default min(128, n_ctx))."""
        return training_window(self.max_len, n_ctx)

    def check(self, n_layers: int, n_ctx: int | None = None) -> None:
        if n_ctx is not None:
            self.window_len(n_ctx)
        if not 0 <= self.layer < n_layers:
            raise ValueError(f"layer={self.layer} is not a block of this {n_layers}-layer model")
        bad = [i for i in self.layers_to_update() if not 0 <= i <= self.layer]
        if bad or not self.layers_to_update():
            raise ValueError(f"update_layers {self.layers_to_update()} must be non-empty blocks 0..layer={self.layer} "
                             "(later blocks do not affect the layer-l activations RMU trains)")
        for name in ("alpha", "lr", "steering_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.steering_coef is not None and not self.steering_coef > 0:
            raise ValueError(f"steering_coef={self.steering_coef} must be positive (or None for the automatic value)")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.param_set not in PARAM_SETS:
            raise ValueError(f"param_set={self.param_set!r}: use one of {sorted(PARAM_SETS)}")


@dataclass
class RMUResult:
    """The unlearned ``model``, the control vector ``c * u`` and a per-step ``log`` (losses, seconds)."""

    model: nn.Module
    control: Float[Tensor, " d_model"]
    config: RMUConfig
    log: list[dict[str, float | int]]

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "steering_coef": float(self.control.norm()), "log": self.log}


def _masked_mse(acts: Float[Tensor, "batch pos d"], target: Float[Tensor, "batch pos d"] | Float[Tensor, " d"],
                real: Bool[Tensor, "batch pos"]) -> Tensor:
    diff = (acts - target)[real]
    return diff.float().square().mean()


def _layer_acts(model: nn.Module, tokens: Tensor, layer: int) -> Float[Tensor, "batch pos d"]:
    """Residual stream after block ``layer`` (= ``blocks.{layer}.hook_resid_post``)."""
    return model(tokens, stop_at_layer=layer + 1)


class _Sampler:
    """Random batches (with a seeded generator) from tokenized texts."""

    def __init__(self, model: nn.Module, texts: TextsOrTokens, max_len: int, batch_size: int, seed: int):
        self.model, self.batch_size = model, batch_size
        self.sequences = to_sequences(model, texts, max_len)
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> TokenBatch:
        idx = torch.randint(0, len(self.sequences), (self.batch_size,), generator=self.gen).tolist()
        return next(iter(iter_batches(self.model, [self.sequences[i] for i in idx], self.batch_size)))


def _mean_norm(model: nn.Module, sampler: _Sampler, layer: int, n_batches: int = 4) -> float:
    norms = []
    with torch.no_grad():
        for _ in range(n_batches):
            batch = sampler.next()
            norms.append(_layer_acts(model, batch.tokens, layer)[batch.real].float().norm(dim=-1))
    return float(torch.cat(norms).mean())


def rmu_unlearn(
    model: nn.Module,
    forget_texts: TextsOrTokens,
    retain_texts: TextsOrTokens,
    config: RMUConfig | None = None,
    *,
    inplace: bool = False,
    progress: bool = True,
) -> RMUResult:
    """Unlearn the forget texts with RMU (module docstring); returns the updated model and a training log."""
    cfg = config or RMUConfig()
    if not hasattr(model, "blocks") or not hasattr(model.blocks[0], "mlp"):
        raise ValueError("RMU needs a HookedTransformer-style model (model.blocks[i].mlp)")
    cfg.check(int(model.cfg.n_layers), int(model.cfg.n_ctx))
    cfg = replace(cfg, max_len=cfg.window_len(int(model.cfg.n_ctx)))  # the result records the length used
    frozen = copy.deepcopy(model) if inplace else model
    student = model if inplace else copy.deepcopy(model)
    student.eval()  # no dropout in TransformerLens models; eval keeps it deterministic
    flags = {name: p.requires_grad for name, p in student.named_parameters()}
    trained_ids = {id(p) for p in trained_parameters(student, cfg.layers_to_update(), cfg.param_set)}
    trained = [p for p in student.parameters() if id(p) in trained_ids]
    for param in student.parameters():
        param.requires_grad_(id(param) in trained_ids)
    forget = _Sampler(student, forget_texts, cfg.max_len, cfg.batch_size, cfg.seed)
    retain = _Sampler(student, retain_texts, cfg.max_len, cfg.batch_size, cfg.seed + 1)
    device, dtype = torch.device(student.cfg.device), student.cfg.dtype
    coef = cfg.steering_coef or cfg.steering_scale * _mean_norm(frozen, retain, cfg.layer)
    direction = torch.rand(int(student.cfg.d_model), generator=torch.Generator().manual_seed(cfg.seed))
    control = (coef * direction / direction.norm()).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr)
    log: list[dict[str, float | int]] = []
    start = time.perf_counter()
    try:
        for step in tqdm(range(cfg.steps), desc="RMU", disable=not progress):
            f_batch, r_batch = forget.next(), retain.next()
            with torch.no_grad():
                r_target = _layer_acts(frozen, r_batch.tokens, cfg.layer)
            forget_loss = _masked_mse(_layer_acts(student, f_batch.tokens, cfg.layer), control, f_batch.real)
            retain_loss = _masked_mse(_layer_acts(student, r_batch.tokens, cfg.layer), r_target, r_batch.real)
            loss = forget_loss + cfg.alpha * retain_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.append({"step": step + 1, "forget_loss": float(forget_loss.detach()), "retain_loss": float(retain_loss.detach()),
                        "seconds": time.perf_counter() - start})
    finally:
        for name, param in student.named_parameters():
            param.requires_grad_(flags[name])
            param.grad = None
    return RMUResult(student, control.detach().cpu(), cfg, log)
