"""SAE adapters against SAELens's own encode/decode, for every architecture x option dsg-lens supports.

The independent reference (:func:`saelens_edit`) calls only SAELens: encode, decode, encode again (decode consumes
the run-time normalisation state), set the latents, decode, add the error. Tiny random SAEs from fixed seeds,
with biases of both signs so latents fire."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sae_lens import (
    AbsTopKSAE,
    AbsTopKSAEConfig,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    MatchingPursuitSAE,
    MatchingPursuitSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TemporalSAE,
    TemporalSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

from dsg_lens.sae_adapters import (
    ADAPTER_REGISTRY,
    AdapterKey,
    FallbackAdapter,
    SAEAdapter,
    adapter_class,
    adapter_for,
    reference_edit,
)
from dsg_lens.sae_adapters.gated import GatedAdapter
from dsg_lens.sae_adapters.jumprelu import JumpReLUAdapter
from dsg_lens.sae_adapters.standard import StandardAdapter
from dsg_lens.sae_adapters.topk import TopKAdapter
from dsg_lens.sae_view import check_sae_fits_model

HOOK = "blocks.1.hook_resid_pre"
# derandomize: the same examples every run (exact slices may flip a JumpReLU/gate comparison at a float boundary)
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NORMS = ("none", "expected_average_only_in", "layer_norm", "constant_norm_rescale")

# architecture -> (config class, SAE class, extra config, options: "rescale" | "b_dec" | "transcoder" | norms)
_TOPK_EXTRA = {"k": 4}
_ARCHS = {
    "standard": (StandardSAEConfig, StandardSAE, {}),
    "jumprelu": (JumpReLUSAEConfig, JumpReLUSAE, {}),
    "gated": (GatedSAEConfig, GatedSAE, {}),
    "topk": (TopKSAEConfig, TopKSAE, _TOPK_EXTRA),
    "abstopk": (AbsTopKSAEConfig, AbsTopKSAE, _TOPK_EXTRA),
    "batchtopk": (BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE, {"k": 3.5}),
    "matryoshka_batchtopk": (MatryoshkaBatchTopKTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAE,
                             {"k": 3.5, "matryoshka_widths": [8, 32]}),
    "matching_pursuit": (MatchingPursuitSAEConfig, MatchingPursuitSAE, {"max_iterations": 6}),
    "temporal": (TemporalSAEConfig, TemporalSAE, {"n_heads": 2, "bottleneck_factor": 2, "kval_topk": 6}),
    "transcoder": (TranscoderConfig, Transcoder, {}),
    "skip_transcoder": (SkipTranscoderConfig, SkipTranscoder, {}),
    "jumprelu_transcoder": (JumpReLUTranscoderConfig, JumpReLUTranscoder, {}),
    "jumprelu_skip_transcoder": (JumpReLUSkipTranscoderConfig, JumpReLUSkipTranscoder, {}),
    "standard_training": (StandardTrainingSAEConfig, StandardTrainingSAE, {}),
    "jumprelu_training": (JumpReLUTrainingSAEConfig, JumpReLUTrainingSAE, {}),
    "topk_training": (TopKTrainingSAEConfig, TopKTrainingSAE, _TOPK_EXTRA),
}
_RESCALABLE = {"topk", "abstopk", "batchtopk", "matryoshka_batchtopk", "topk_training"}
_TRANSCODERS = {"transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"}


@dataclass(frozen=True)
class Case:
    arch: str
    norm: str = "none"
    apply_b_dec: bool = True
    rescale: bool = False
    d_in: int = 12
    d_sae: int = 32

    def __str__(self) -> str:
        return f"{self.arch}-{self.norm}-bdec{int(self.apply_b_dec)}-rescale{int(self.rescale)}"


def _cases() -> list[Case]:
    cases = []
    for arch in _ARCHS:
        norms = NORMS + (("constant_scalar_rescale",) if arch == "temporal" else ())
        for norm in norms:
            for b_dec in ((False,) if arch in _TRANSCODERS else (True, False)):
                for rescale in ((False, True) if arch in _RESCALABLE else (False,)):
                    cases.append(Case(arch, norm, b_dec, rescale))
    return cases


CASES = _cases()


def build_sae(case: Case, seed: int = 0):
    """A tiny SAE of ``case`` with random weights (fixed seed)."""
    cfg_cls, sae_cls, extra = _ARCHS[case.arch]
    kwargs = dict(extra, d_in=case.d_in, d_sae=case.d_sae, normalize_activations=case.norm,
                  apply_b_dec_to_input=case.apply_b_dec, metadata=SAEMetadata(hook_name=HOOK))
    if case.arch in _RESCALABLE:
        kwargs["rescale_acts_by_decoder_norm"] = case.rescale
    if case.arch in _TRANSCODERS:
        kwargs["d_out"] = case.d_in
        kwargs["metadata"] = SAEMetadata(hook_name=HOOK, hook_name_out=HOOK)
    if case.arch == "temporal" and case.norm == "constant_scalar_rescale":
        kwargs["activation_normalization_factor"] = 2.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = sae_cls(cfg_cls(**kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name in ("threshold",):
                param.copy_(noise.abs() * 0.3)
            elif name == "log_threshold":
                param.copy_((noise.abs() * 0.3 + 1e-3).log())
            elif name.startswith(("b_enc", "b_gate", "b_mag")):
                param.copy_(noise * 0.5)  # both signs: some latents fire often, some rarely
            elif name == "r_mag":
                param.copy_(noise * 0.2)
            else:
                param.copy_(noise * (0.4 if param.ndim > 1 else 0.2))
    return sae.eval()


def saelens_edit(sae, x, ids, where, new):
    """The independent reference: SAELens encode/decode only (module docstring)."""
    with torch.no_grad():
        a = sae.encode(x)
        recons = sae.decode(a)
        a_again = sae.encode(x)  # decode consumed the run-time normalisation state (layer_norm, ...)
        edited = a_again.clone()
        edited[..., ids] = new.to(edited.dtype)
        out = sae.decode(edited) + (x.to(recons.dtype) - recons)
    return torch.where(where[..., None], out.to(x.dtype), x)


@st.composite
def inputs(draw, case: Case):
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    batch, pos = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    scale = draw(st.sampled_from([0.3, 1.0, 4.0]))
    x = torch.randn(batch, pos, case.d_in, generator=gen) * scale + torch.randn(case.d_in, generator=gen)
    ids = draw(st.lists(st.integers(0, case.d_sae - 1), min_size=1, max_size=6, unique=True))
    where = torch.rand(batch, pos, generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    kind = draw(st.sampled_from(["clamp", "zero", "random", "steer"]))
    value = draw(st.sampled_from([-500.0, -50.0, -1.0, 3.0]))
    return seed, x, ids, where, kind, value


def _new_values(kind: str, value: float, old: torch.Tensor, seed: int) -> torch.Tensor:
    if kind == "clamp":
        return torch.full_like(old, value)
    if kind == "zero":
        return torch.zeros_like(old)
    if kind == "steer":
        return old + value
    return torch.randn(old.shape, generator=torch.Generator().manual_seed(seed)) * abs(value)


def _assert_edit(out, expected, x):
    size = float((expected - x).abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(out, expected, atol=1e-4 * max(1.0, size), rtol=1e-4)


# --------------------------------------------------------------------------------------- the properties
@pytest.mark.parametrize("case", CASES, ids=str)
@settings(max_examples=10, **SETTINGS)
@given(data=st.data())
def test_encode_equals_saelens_encode(case, data):
    seed, x, ids, _, _, _ = data.draw(inputs(case))
    sae = build_sae(case, seed % 4)
    adapter = adapter_for(sae, ids)
    with torch.no_grad():
        expected = sae.encode(x)[..., ids]
        got = adapter.encode(x)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=str)
@settings(max_examples=10, **SETTINGS)
@given(data=st.data())
def test_edit_equals_saelens_decode_plus_error_and_leaves_other_positions_bit_identical(case, data):
    seed, x, ids, where, kind, value = data.draw(inputs(case))
    sae = build_sae(case, seed % 4)
    adapter = adapter_for(sae, ids)
    with torch.no_grad():
        old = adapter.encode(x)
        new = _new_values(kind, value, old, seed)
        out = adapter.edit(x, old, new, where)
    expected = saelens_edit(sae, x, ids, where, new)
    assert out.dtype == x.dtype and out.shape == x.shape
    _assert_edit(out, expected, x)
    assert torch.equal(out[~where], x[~where])
    reference = reference_edit(sae, x, ids, where, new)
    _assert_edit(reference, expected, x)
    assert torch.equal(reference[~where], x[~where])


def test_every_case_fires_and_edits():
    """The random SAEs are not degenerate: selected latents fire, and a clamp moves the activations."""
    for case in CASES:
        sae = build_sae(case)
        x = torch.randn(2, 5, case.d_in, generator=torch.Generator().manual_seed(1)) * 2
        with torch.no_grad():
            acts = sae.encode(x)
        assert (acts != 0).float().mean() > 0.05, case
        ids = acts.abs().sum((0, 1)).argsort(descending=True)[:3].tolist()
        where = torch.ones(2, 5, dtype=torch.bool)
        out = adapter_for(sae, ids).edit(x, acts[..., ids], torch.full((2, 5, 3), -500.0), where)
        assert (out - x).abs().max() > 1.0, case


# -------------------------------------------------------------------------------- which adapter, and why
EXPECTED_ADAPTER = {
    "standard": StandardAdapter, "jumprelu": JumpReLUAdapter, "gated": GatedAdapter, "topk": TopKAdapter,
    "topk_training": TopKAdapter,
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_registry_sends_everything_unproven_to_the_fallback(case):
    sae = build_sae(case)
    adapter = adapter_for(sae, [0, 1])
    fast_norm = case.norm in ("none", "expected_average_only_in")
    if not fast_norm or case.arch in _TRANSCODERS or case.arch in ("temporal", "standard_training",
                                                                      "jumprelu_training"):
        assert type(adapter) is FallbackAdapter
        assert not adapter.exact_slice
    else:
        assert type(adapter) is not FallbackAdapter
        if case.arch in EXPECTED_ADAPTER:
            assert isinstance(adapter, EXPECTED_ADAPTER[case.arch])
        assert adapter.exact_slice == (case.arch in ("standard", "jumprelu", "gated"))


def test_registry_keys_name_architecture_normalisation_and_rescale():
    assert ADAPTER_REGISTRY[AdapterKey("topk", "none", True)] is TopKAdapter
    assert ADAPTER_REGISTRY[AdapterKey("standard", "expected_average_only_in", False)] is StandardAdapter
    assert AdapterKey("standard", "layer_norm", False) not in ADAPTER_REGISTRY
    assert AdapterKey("temporal", "none", False) not in ADAPTER_REGISTRY


def test_a_subclass_that_overrides_encode_goes_to_the_fallback():
    class Doubled(StandardSAE):
        def encode(self, x):
            return super().encode(x) * 2

    sae = Doubled(StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name=HOOK)))
    assert adapter_class(sae) is FallbackAdapter
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(adapter_for(sae, [1, 2]).encode(x), sae.encode(x)[..., [1, 2]])


# ------------------------------------------------------------------- the old delta form and the fallback
@pytest.mark.parametrize("case", [Case("standard", "layer_norm"), Case("jumprelu", "constant_norm_rescale"),
                                  Case("topk", "none", rescale=True)], ids=str)
def test_plain_delta_form_is_wrong_where_decode_is_more_than_acts_times_w_dec(case):
    """``x + (new - old) @ W_dec[ids]`` (the old SelectedLatents path) is off by about the size of the edit."""
    sae = build_sae(case)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, case.d_in, generator=gen) * 4 + 1
    with torch.no_grad():
        acts = sae.encode(x)
    ids = acts.abs().sum((0, 1)).argsort(descending=True)[:3].tolist()
    where = torch.ones(2, 6, dtype=torch.bool)
    old = acts[..., ids]
    new = torch.full_like(old, -500.0)
    truth = saelens_edit(sae, x, ids, where, new)
    with torch.no_grad():
        plain_delta = x + (new - old) @ sae.W_dec[ids]
    edit_size = (truth - x).norm()
    assert (plain_delta - truth).norm() > 0.1 * edit_size
    adapter = adapter_for(sae, ids)
    _assert_edit(adapter.edit(x, adapter.encode(x), new, where), truth, x)


def test_reference_edit_on_a_layer_norm_sae():
    """Encodes once and decodes once: no 'has no attribute ln_mu' crash, and the SAE stays usable."""
    sae = build_sae(Case("standard", "layer_norm"))
    x = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(0)) * 3
    where = torch.tensor([[True, False, True, True], [False, False, True, False]])
    with torch.no_grad():
        out = reference_edit(sae, x, [3, 5], where, torch.tensor([-500.0, 0.0]))
        again = reference_edit(sae, x, [3, 5], where, torch.tensor([-500.0, 0.0]))
    expected = saelens_edit(sae, x, [3, 5], where, torch.tensor([-500.0, 0.0]).expand(2, 4, 2))
    _assert_edit(out, expected, x)
    assert torch.equal(out, again) and torch.equal(out[~where], x[~where])
    with torch.no_grad():
        acts = sae.encode(x)
        reference_edit(sae, x, [3], where, torch.tensor([1.0]), acts=acts)  # the caller's own encode, reused


def test_reference_edit_rejects_bad_input():
    sae = build_sae(Case("standard"))
    x = torch.randn(2, 12)
    with pytest.raises(ValueError, match="broadcast"):
        reference_edit(sae, x, [1, 2], torch.ones(2, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(ValueError, match="duplicates"):
        reference_edit(sae, x, [1, 1], torch.ones(2, dtype=torch.bool), torch.zeros(2))


@pytest.mark.parametrize("case", [Case("standard"), Case("gated"), Case("topk", rescale=True),
                                  Case("standard", "layer_norm"), Case("temporal")], ids=str)
def test_bf16_activations_with_an_fp32_sae_come_back_bf16(case):
    sae = build_sae(case)
    x = (torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(0)) * 2).to(torch.bfloat16)
    adapter = adapter_for(sae, [0, 4, 9])
    where = torch.tensor([[True, False, True], [True, True, False]])
    with torch.no_grad():
        old = adapter.encode(x)
        assert old.dtype == torch.float32
        out = adapter.edit(x, old, torch.full_like(old, -20.0), where)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[~where], x[~where])
    expected = saelens_edit(sae, x.float(), [0, 4, 9], where, torch.full_like(old, -20.0)).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, atol=0.05 * max(1.0, float((expected.float() - x.float()).abs().max())),
                               rtol=1e-2)


def test_activations_without_batch_axes():
    sae = build_sae(Case("jumprelu"))
    x = torch.randn(12, generator=torch.Generator().manual_seed(0)) * 3
    for adapter in (adapter_for(sae, [1, 2, 3]), FallbackAdapter(sae, [1, 2, 3])):
        with torch.no_grad():
            old = adapter.encode(x)
            out = adapter.edit(x, old, torch.zeros(3), torch.tensor(True))
        _assert_edit(out, saelens_edit(sae, x, [1, 2, 3], torch.tensor(True), torch.zeros(3)), x)


# ---------------------------------------------------------------------------------- the public surface
def test_adapter_attributes():
    sae = build_sae(Case("topk", rescale=True))
    adapter = adapter_for(sae, [7, 2, 30])
    assert isinstance(adapter, SAEAdapter)
    assert adapter.n == 3 and adapter.latent_ids.dtype == torch.long
    assert adapter.latent_ids.tolist() == [7, 2, 30] and "latent_ids" in dict(adapter.named_buffers())
    assert adapter.sae_dtype == torch.float32
    norms = adapter.decoder_norms()
    assert norms.dtype == torch.float32 and norms.device.type == "cpu" and norms.shape == (3,)
    torch.testing.assert_close(norms, torch.ones(3))  # rescaled: each effective row has unit norm
    assert list(adapter.parameters()) == []  # the SAE is used, not adopted: adapter.to() never moves it
    plain = adapter_for(build_sae(Case("standard")), [7, 2])
    torch.testing.assert_close(plain.decoder_norms(), build_sae(Case("standard")).W_dec[[7, 2]].norm(dim=-1))
    fallback = adapter_for(build_sae(Case("standard", "layer_norm")), [7, 2])
    torch.testing.assert_close(fallback.decoder_norms(), build_sae(Case("standard")).W_dec[[7, 2]].norm(dim=-1))


def test_weights_are_copied_once_to_the_requested_device():
    sae = build_sae(Case("standard"))
    exact = adapter_for(sae, [1, 2], device="meta")
    assert exact.W_enc.device.type == "meta" and exact.latent_ids.device.type == "meta"
    full = adapter_for(build_sae(Case("standard", "layer_norm")), [1, 2], device="meta")
    assert full.sae.W_dec.device.type == "meta"
    topk = build_sae(Case("topk"))
    same = adapter_for(topk, [1, 2])
    assert same.sae is topk  # on its own device: used in place, never copied
    assert sae.W_dec.device.type == "cpu" and topk.W_dec.device.type == "cpu"


@pytest.mark.parametrize(
    "ids, match",
    [([], "empty"), ([32], "out of range"), ([-1], "out of range"), ([3, 3], "duplicates"),
     (torch.tensor([0.5]), "integer")],
)
def test_bad_latent_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        adapter_for(build_sae(Case("standard")), ids)


def test_non_finite_parameters_of_the_selected_latents_are_named():
    sae = build_sae(Case("jumprelu"))
    with torch.no_grad():
        sae.threshold[5] = math.nan
    adapter_for(sae, [4, 6])  # other latents are fine
    with pytest.raises(ValueError, match="threshold"):
        adapter_for(sae, [4, 5])
    with torch.no_grad():
        sae.b_dec[0] = math.inf
    with pytest.raises(ValueError, match="b_dec"):
        adapter_for(sae, [4, 6])


def test_transcoders_that_cannot_be_edited_at_one_hook_are_refused():
    meta = SAEMetadata(hook_name=HOOK, hook_name_out=HOOK)
    wide = Transcoder(TranscoderConfig(d_in=8, d_sae=16, d_out=10, apply_b_dec_to_input=False, metadata=meta))
    with pytest.raises(ValueError, match="d_out=10"):
        adapter_for(wide, [0])
    two_hooks = SAEMetadata(hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out")
    mlp = Transcoder(TranscoderConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False, metadata=two_hooks))
    with pytest.raises(ValueError, match="hook_mlp_out"):
        adapter_for(mlp, [0])
    with pytest.raises(ValueError, match="one hook"):
        reference_edit(mlp, torch.randn(2, 8), [0], torch.ones(2, dtype=torch.bool), torch.zeros(1))


def test_hook_z_saes_are_refused():
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=8, reshape_activations="hook_z",
                                        metadata=SAEMetadata(hook_name="blocks.0.attn.hook_z")))
    with pytest.raises(ValueError, match="hook_z"):
        adapter_for(sae, [0])


def test_where_must_be_bool():
    adapter = adapter_for(build_sae(Case("standard")), [0])
    x = torch.randn(2, 12)
    old = adapter.encode(x)
    with pytest.raises((ValueError, TypeError)):  # TypeError: jaxtyping's check at test time, first
        adapter.edit(x, old, old, torch.ones(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------- sae_view
def test_check_sae_fits_model_with_an_explicit_hook_and_no_hook_name_in_the_metadata(tiny_gpt2):
    sae = build_sae(Case("standard", d_in=16))
    sae.cfg.metadata.hook_name = None
    assert check_sae_fits_model(tiny_gpt2, sae, hook_name=HOOK) == HOOK  # was: 'NoneType' has no 'endswith'
    with pytest.raises(ValueError, match="hook_name"):
        check_sae_fits_model(tiny_gpt2, sae)


def _around_guardrail(model, guard, tokens):
    """The activation at HOOK before and after the attached guardrail, for one forward over ``tokens``."""
    import dsg_lens as dsg

    store: dict = {}
    with dsg.scoped_hooks(model, dsg.cache_spec(HOOK, store, key="before", order=-1)):
        with guard.attached(model):
            with dsg.scoped_hooks(model, dsg.cache_spec(HOOK, store, key="after")):
                model(tokens)
    return store["before"], store["after"]


MODEL_CASES = [c for c in CASES if c.arch in ("standard", "jumprelu", "gated", "topk", "batchtopk")
               and c.apply_b_dec]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(MODEL_CASES), data=st.data())
def test_attached_guardrail_equals_saelens_encode_clamp_decode(tiny_gpt2, case, data):
    """The guardrail on a model, for every architecture x normalisation: at the hook its output equals SAELens
    encode -> clamp -> decode + error at the fired real tokens where the gate is on, and the input elsewhere."""
    import dsg_lens as dsg

    sae = build_sae(Case(case.arch, case.norm, case.apply_b_dec, case.rescale, d_in=16, d_sae=48),
                    seed=data.draw(st.integers(0, 50)))
    ids = data.draw(st.lists(st.integers(0, 47), min_size=1, max_size=6, unique=True))
    clamp = data.draw(st.sampled_from([5.0, 500.0]))
    guard = dsg.DynamicSAEGuardrail(sae, ids, dsg.WindowGate(tau=0.1, window=4, min_tokens=2), clamp=clamp)
    words = [f"w{i}" for i in data.draw(st.lists(st.integers(0, 43), min_size=3, max_size=10))]
    tokens = tiny_gpt2.to_tokens([" ".join(words), " ".join(words[::-1][:3])], padding_side="right")
    x, after = _around_guardrail(tiny_gpt2, guard, tokens)
    with torch.no_grad():
        real = ~torch.isin(tokens, torch.tensor(tiny_gpt2.tokenizer.all_special_ids))
        fired = (sae.encode(x)[..., ids] > 0).any(-1) & real
        on = guard.gate.decisions(fired, real) & fired
    expected = saelens_edit(sae, x, ids, on, torch.full((len(ids),), -clamp))
    scale = 1e-4 * max(1.0, clamp / 5)
    torch.testing.assert_close(after, expected, atol=scale, rtol=1e-4)
    assert torch.equal(after[~on], x[~on])


@pytest.mark.parametrize("case", [Case("standard", n, d_in=16, d_sae=48) for n in NORMS]
                         + [Case("topk", "none", rescale=True, d_in=16, d_sae=48)], ids=str)
def test_attached_guardrail_edits_normalised_saes_like_saelens(tiny_gpt2, case):
    """The same check with the gate always on, so every example edits (the property test may draw none)."""
    import dsg_lens as dsg

    sae = build_sae(case, seed=3)
    ids = [0, 1, 2, 3, 4, 5]
    guard = dsg.DynamicSAEGuardrail(sae, ids, dsg.PaperGate(-1.0), clamp=50.0)
    tokens = tiny_gpt2.to_tokens(["w1 w2 w3 w4 w5 w6", "w7 w8 w9"], padding_side="right")
    x, after = _around_guardrail(tiny_gpt2, guard, tokens)
    with torch.no_grad():
        real = ~torch.isin(tokens, torch.tensor(tiny_gpt2.tokenizer.all_special_ids))
        on = (sae.encode(x)[..., ids] > 0).any(-1) & real
    assert on.sum() >= 3
    expected = saelens_edit(sae, x, ids, on, torch.full((len(ids),), -50.0))
    torch.testing.assert_close(after, expected, atol=1e-3, rtol=1e-4)
    assert not torch.allclose(after, x)
