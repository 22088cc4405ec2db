"""The lm-evaluation-harness model ``dsg``: a TransformerLens model (HookedTransformer or TransformerBridge) with an
optional saved DSG guardrail, scored by dsg-lens's own leak-free mechanism.

Importing this module registers ``dsg`` with lm-eval (``lm_eval.api.registry.register_model``). Three ways in:

- ``dsg-lens lm-eval run --model dsg --model_args model=smollm2-135m-instruct,sae=embedded,guardrail=guard/
  --tasks wmdp_bio,mmlu`` (or ``python -m dsg_lens.lm_eval_model run ...``): lm-eval's own command line with
  ``dsg`` registered; ``accelerate launch -m dsg_lens.lm_eval_model run ...`` or ``torchrun --nproc-per-node 8
  -m dsg_lens.lm_eval_model run ...`` for lm-eval's data parallelism (each process takes its share of requests).
- ``lm_eval.simple_evaluate(model=DSGLM(model=model, guardrail=guard), tasks=[...])`` with objects you hold.
- ``lm_eval.simple_evaluate(model="dsg", model_args="model=...,guardrail=guard/")`` after ``import
  dsg_lens.lm_eval_model``.

Scoring is leak-free like :func:`dsg_lens.eval.mcq.score_mcq`'s completion protocol: ``loglikelihood`` runs
:func:`dsg_lens.eval.mcq.continuation_scores` (each context once into a frozen KV cache on a HookedTransformer,
one full pass per request on a TransformerBridge) with the guardrail attached only for the call, and refuses a
non-causal gate (the paper's per-sequence rho would let each answer switch the guardrail on for the positions that
predict it). A context and its continuation are tokenized together and split, as lm-eval's ``hf`` model does
(trailing spaces move to the continuation); the model's own BOS convention (``cfg.default_prepend_bos``) is kept.
``generate_until`` runs ``model.generate`` one request at a time (greedy unless ``do_sample``), cut at the first
stop string.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import nn
from tqdm.auto import tqdm

from dsg_lens import distributed
from dsg_lens.config import EMBEDDED_MODEL
from dsg_lens.eval.batching import supports_kv_cache
from dsg_lens.eval.mcq import continuation_scores, refuse_non_causal_gates

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("dsg")
class DSGLM(LM):
    """lm-eval model over a TransformerLens model with an optional DSG guardrail (module docstring).

    ``model``: a loaded HookedTransformer / TransformerBridge, or a name for :func:`dsg_lens.models.load_model`
    (``kind``: ``hooked``, ``sae`` or ``bridge``; ``dtype``; ``device``). ``guardrail``: a
    :class:`~dsg_lens.guardrail.DynamicSAEGuardrail` or the folder ``dsg-lens fit`` wrote (loaded against ``sae``:
    an SAE object, ``"embedded"``, a local SAELens folder or ``"release:sae_id"``); None scores the base model.
    """

    def __init__(
        self,
        model: nn.Module | str = EMBEDDED_MODEL,
        sae: Any = "embedded",
        guardrail: Any = None,
        *,
        kind: str = "hooked",
        dtype: str | torch.dtype = "float32",
        device: str | None = None,
        batch_size: int | str = 16,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        progress: bool = True,
        **unused: Any,
    ) -> None:
        super().__init__()
        unused = {k: v for k, v in unused.items() if v is not None and k != "max_batch_size"}
        if unused:
            raise ValueError(f"model_args {sorted(unused)} are not options of the dsg model: use model, sae, "
                             "guardrail, kind, dtype, device, batch_size, max_length, max_gen_toks")
        self._rank, self._world_size = distributed.init_from_env()
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s but no CUDA device is visible: running on the CPU", device)
            device = "cpu"
        if self._world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{distributed.local_rank()}"  # lm-eval's data parallelism: one GPU per process
        name = model if isinstance(model, str) else None  # picks the SAE shipped for it (sae=embedded)
        if isinstance(model, str):
            from dsg_lens.models import load_model

            if dtype not in _DTYPES and not isinstance(dtype, torch.dtype):
                raise ValueError(f"dtype={dtype!r}: use one of {sorted(_DTYPES)}")
            model = load_model(model, kind=kind, dtype=_DTYPES.get(dtype, dtype), device=device)
        self.model = model
        self.guard = _load_guardrail(guardrail, sae, model, name)
        if self.guard is not None:
            self.guard.hook_specs(model)  # the SAE must fit the model: fail now, not in the first request
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer: lm-eval passes text")
        self._device = torch.device(model.cfg.device)
        self.batch_size = _batch_size(batch_size)
        self.max_length = int(max_length or model.cfg.n_ctx)
        if not 2 <= self.max_length <= int(model.cfg.n_ctx):
            raise ValueError(f"max_length={max_length} must be between 2 and the model's n_ctx={model.cfg.n_ctx}")
        self.max_gen_toks = int(max_gen_toks)
        self.progress = bool(progress) and self._rank == 0

    # ----------------------------------------------------------------------------------------------- tokens
    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes (and what rolling windows start from): BOS, else EOS."""
        bos = self.tokenizer.bos_token_id
        return int(bos if bos is not None else self.tokenizer.eos_token_id)

    def _encode(self, text: str, bos: bool) -> list[int]:
        """Token ids of ``text`` as the model's ``to_tokens`` makes them (with or without its BOS)."""
        if not text:
            return [self.prefix_token_id] if bos else []
        return self.model.to_tokens(text, prepend_bos=bos, truncate=False)[0].tolist()

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a request: the context with the model's default BOS (BOS alone when empty), the
        continuation split off the joint tokenization (trailing spaces of the context move to it)."""
        if not context:
            return [self.prefix_token_id], self._encode(continuation, bos=False)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        bos = bool(self.model.cfg.default_prepend_bos)
        whole = self._encode(context + continuation, bos)
        ctx = self._encode(context, bos)
        return ctx, whole[len(ctx):]

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Drop context tokens from the left so that context + continuation fit ``max_length`` tokens."""
        if not cont:
            raise ValueError("a request's continuation is empty after tokenization")
        if len(cont) >= self.max_length:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length={self.max_length}")
        return ctx[-(self.max_length - len(cont)):], cont

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """The guardrail attached for one call (removed on exit, exceptions included)."""
        if self.guard is None:
            yield
            return
        with self.guard.attached(self.model):
            refuse_non_causal_gates(self.model)
            yield

    def _scores(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str) -> list[tuple[float, bool]]:
        with self._guarded():
            scores = continuation_scores(self.model, pairs, batch_size=self.batch_size, progress=self.progress,
                                         desc=desc)
        return [(float(score.log_probs.sum()), score.greedy) for score in scores]

    # ------------------------------------------------------------------------------------------ the LM API
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives the continuation) per request."""
        pairs = [self._fit(*self._encode_pair(*request.args)) for request in requests]
        results = self._scores(pairs, "lm-eval loglikelihood")
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """log p of each whole text, in disjoint windows of ``max_length`` tokens (lm-eval's rolling windows:
        every token predicted once, the first from the prefix token)."""
        windows, owner = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            tokens = self._encode(text, bos=False)
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((ctx, cont))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (value, _) in zip(owner, self._scores(windows, "lm-eval loglikelihood_rolling")):
            totals[index] += value
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations, cut at the first of the ``until`` strings."""
        out = []
        use_cache = supports_kv_cache(self.model)  # TransformerLens 3.9's Bridge ignores its KV cache (README)
        for request in tqdm(requests, desc="lm-eval generate_until", disable=not self.progress or disable_tqdm):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
            do_sample = bool(kwargs.pop("do_sample", False))
            options = {k: kwargs.pop(k) for k in ("temperature", "top_k", "top_p") if k in kwargs} if do_sample else {}
            ids = self._encode(context, bool(self.model.cfg.default_prepend_bos))[-(self.max_length - max_new):]
            ids = ids or [self.prefix_token_id]
            tokens = torch.tensor([ids], dtype=torch.long, device=self._device)
            with self._guarded(), torch.no_grad():
                generated = self.model.generate(tokens, max_new_tokens=max_new, do_sample=do_sample,
                                                use_past_kv_cache=use_cache, verbose=False, **options)
            text = self.tokenizer.decode(generated[0, len(ids):].tolist(), skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out

    # ------------------------------------------------------------------------- chat templates, several ranks
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.ndim == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self._world_size == 1:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, result, dst=dst)
        return result

    def barrier(self) -> None:
        if self._world_size > 1:
            torch.distributed.barrier()


def _batch_size(value: int | str) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        log.warning("batch_size=%s: the dsg model has no automatic batch size; using 16", value)
        return 16
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size={value!r} must be a positive int")
    return size


def _load_guardrail(guardrail: Any, sae: Any, model: nn.Module, name: str | None = None) -> Any:
    """The guardrail object, loading a saved folder against the SAE named by ``sae`` (``"embedded"``: the SAE
    shipped for the model ``name``, when the model was given by name; else the embedded model's)."""
    if guardrail is None or guardrail == "":
        return None
    from dsg_lens.guardrail import DynamicSAEGuardrail

    if isinstance(guardrail, DynamicSAEGuardrail):
        return guardrail
    folder = Path(str(guardrail))
    if not (folder / "guardrail.json").is_file():
        raise ValueError(f"guardrail={guardrail}: no guardrail.json in that folder (write one with `dsg-lens fit "
                         f"--out {guardrail}` or guard.save(folder))")
    if isinstance(sae, str):
        from dsg_lens.models import EMBEDDED_MODEL
        from dsg_lens.pipeline import load_sae

        sae = load_sae(sae, device=model.cfg.device, model=name or EMBEDDED_MODEL)
    return DynamicSAEGuardrail.load(folder, sae=sae.to(model.cfg.device))


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line (``lm-eval run ...``) with the ``dsg`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
