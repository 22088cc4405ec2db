"""Latent interventions: delta form, exactness against SAELens, masks, static clamping, cache observer."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_sae, texts
from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

import dsg_lens as dsg
from dsg_lens import interventions as iv
from dsg_lens.sae_adapters import adapter_for

HOOK = "blocks.1.hook_resid_pre"


def _tokens(model, seed=5, n=3):
    return model.to_tokens(texts(seed, n, False), padding_side="right")


def _capture(model, tokens, *specs):
    """The activation at HOOK before and after ``specs`` (observers attached around them)."""
    store: dict = {}
    with dsg.scoped_hooks(model, iv.cache_spec(HOOK, store, key="before", order=-100)):
        with dsg.scoped_hooks(model, *specs, iv.cache_spec(HOOK, store, key="after")):
            logits = model(tokens)
    return store["before"], store["after"], logits


def _kill_latent(sae, resid, latent=7):
    """Make ``latent`` of ``sae`` never fire (a very negative encoder bias) and check it."""
    with torch.no_grad():
        sae.b_enc[latent] = -1e4
    assert not (sae.encode(resid)[..., latent] > 0).any()
    return latent


def _live_latents(sae, resid, k=3):
    counts = (sae.encode(resid) > 0).sum((0, 1))
    return counts.argsort(descending=True)[:k].tolist()


def test_ablating_a_latent_that_never_fires_is_bit_identical(tiny_gpt2, any_sae):
    tokens = _tokens(tiny_gpt2)
    base = tiny_gpt2(tokens)
    before, _, _ = _capture(tiny_gpt2, tokens)
    dead = _kill_latent(any_sae, before)
    for spec in (iv.zero_ablate(any_sae, dead), iv.scale_latents(any_sae, dead, 3.0),
                 iv.static_clamp(any_sae, [dead], 50)):
        with dsg.scoped_hooks(tiny_gpt2, spec):
            assert torch.equal(tiny_gpt2(tokens), base)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_zero_ablation_equals_decoder_row_removed(tiny_gpt2, kind):
    """resid' = decode_{W_dec[j]=0}(encode(x)) + (x - decode(encode(x))): the reconstruction without latent j's
    decoder row plus the error of the unmodified SAE."""
    sae = make_sae(kind)
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tokens)
    ids = _live_latents(sae, before, k=2)
    _, after, _ = _capture(tiny_gpt2, tokens, iv.zero_ablate(sae, ids))
    removed = make_sae(kind)
    with torch.no_grad():
        removed.W_dec[ids] = 0.0
    acts = sae.encode(before)
    reference = removed.decode(acts) + (before - sae.decode(acts))
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)


def test_zero_ablation_equals_hooked_sae_transformer_with_error_term(tiny_tokenizer):
    """Same logits as SAELens's HookedSAETransformer with the SAE attached (use_error_term=True) and latent j
    zeroed at hook_sae_acts_post. Zeroing W_dec[j] of the attached SAE instead changes nothing: the error term,
    computed with the same (edited) SAE, absorbs it."""
    model = make_model("gpt2", tiny_tokenizer, cls=HookedSAETransformer)
    sae = make_sae()
    tokens = _tokens(model)
    before, _, base = _capture(model, tokens)
    ids = _live_latents(sae, before, k=2)
    with dsg.scoped_hooks(model, iv.zero_ablate(sae, ids)):
        ours = model(tokens)

    def zero_latents(acts, hook):
        acts[..., ids] = 0.0
        return acts

    model.add_sae(sae, use_error_term=True)
    try:
        saelens = model.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", zero_latents)])
        with torch.no_grad():
            sae.W_dec[ids] = 0.0
        row_zeroed_in_attached_sae = model(tokens)
    finally:
        model.reset_saes()
    assert not torch.allclose(ours, base)
    torch.testing.assert_close(ours, saelens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(row_zeroed_in_attached_sae, base, atol=1e-5, rtol=1e-5)


def test_rules_set_the_latents_as_documented(tiny_gpt2):
    sae = make_sae("jumprelu")
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tokens)
    ids = _live_latents(sae, before, k=3)
    adapter = adapter_for(sae, ids)
    a = adapter.encode(before)
    means = torch.rand(sae.cfg.d_sae)
    cases = {
        "zero": (iv.zero_ablate(sae, ids), torch.zeros_like(a)),
        "mean": (iv.mean_ablate(sae, ids, means), means[ids].expand_as(a)),
        "clamp": (iv.clamp_latents(sae, ids, [1.0, -2.0, 3.0]), torch.tensor([1.0, -2.0, 3.0]).expand_as(a)),
        "scale": (iv.scale_latents(sae, ids, 2.5), a * 2.5),
        "steer": (iv.steer_latents(sae, ids, 4.0), a + 4.0),
    }
    for name, (spec, new) in cases.items():
        _, after, _ = _capture(tiny_gpt2, tokens, spec)
        expected = before + (new - a) @ sae.W_dec[ids]  # jumprelu: decode is acts @ W_dec + b_dec
        torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_interventions_on_a_layer_norm_sae_go_through_its_own_decode(tiny_gpt2):
    """SAELens layer_norm SAEs rescale decode by the input's std (state set by encode): the edit is SAELens's
    encode -> set -> decode + error, here computed with SAELens calls; tokens where nothing changes stay identical."""
    plain = make_sae()
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=64, normalize_activations="layer_norm",
                                        metadata=SAEMetadata(hook_name=HOOK)))
    sae.load_state_dict(plain.state_dict())
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tokens)
    ids = _live_latents(sae, before, k=2)
    _, after, _ = _capture(tiny_gpt2, tokens, iv.zero_ablate(sae, ids))
    with torch.no_grad():
        acts = sae.encode(before)
        recons = sae.decode(acts)
        edited = sae.encode(before)  # decode consumed the normalisation state
        edited[..., ids] = 0.0
        expected = sae.decode(edited) + (before - recons)
    changed = (acts[..., ids] != 0).any(-1)
    assert changed.any() and not changed.all()
    torch.testing.assert_close(after[changed], expected[changed], atol=1e-4, rtol=1e-4)
    assert torch.equal(after[~changed], before[~changed])
    naive = before + (0 - acts[..., ids]) @ sae.W_dec[ids]  # the delta form ignores the std rescaling
    assert not torch.allclose(after[changed], naive[changed], atol=1e-3)


def test_mean_ablation_from_latent_stats(tiny_gpt2):
    sae = make_sae()
    stats = dsg.collect_latent_stats(tiny_gpt2, sae, texts(1, 6, False), progress=False)
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tokens)
    ids = _live_latents(sae, before, k=2)
    _, from_stats, _ = _capture(tiny_gpt2, tokens, iv.mean_ablate(sae, ids, stats))
    _, from_tensor, _ = _capture(tiny_gpt2, tokens, iv.mean_ablate(sae, ids, stats.mean_act))
    assert torch.equal(from_stats, from_tensor)
    assert not torch.equal(from_stats, before)


def test_where_mask_and_only_where_active(tiny_gpt2):
    sae = make_sae()
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tokens)
    ids = _live_latents(sae, before, k=1)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, 2] = True
    _, after, _ = _capture(tiny_gpt2, tokens, iv.steer_latents(sae, ids, 5.0, where=mask))
    changed = (after != before).any(-1)
    assert torch.equal(changed, mask)
    _, by_callable, _ = _capture(tiny_gpt2, tokens, iv.steer_latents(sae, ids, 5.0, where=lambda act, hook: mask))
    assert torch.equal(by_callable, after)
    active = sae.encode(before)[..., ids[0]] > 0
    assert active.any() and not active.all()
    _, gated, _ = _capture(tiny_gpt2, tokens, iv.steer_latents(sae, ids, 5.0, only_where_active=True))
    assert torch.equal((gated != before).any(-1), active)


def test_static_clamp_sets_each_latent_only_where_it_fires(tiny_gpt2):
    sae = make_sae()
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tokens)
    ids = _live_latents(sae, before, k=2)
    _, after, _ = _capture(tiny_gpt2, tokens, iv.static_clamp(sae, ids, 20))
    a = sae.encode(before)[..., ids]
    real = ~torch.isin(tokens, torch.tensor(tiny_gpt2.tokenizer.all_special_ids))  # BOS/pad never edited
    new = torch.where((a > 0) & real[..., None], torch.full_like(a, -20.0), a)
    expected = before + (new - a) @ sae.W_dec[ids]
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal((after != before).any(-1), (a > 0).any(-1) & real)
    assert (a[:, 0] > 0).any() and torch.equal(after[:, 0], before[:, 0])  # BOS fires, and is left alone


def test_bf16_model_keeps_its_dtype(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer, dtype=torch.bfloat16)
    sae = make_sae()
    _, after, _ = _capture(model, _tokens(model), iv.steer_latents(sae, [0, 1], 3.0))
    assert after.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda sae: iv.zero_ablate(sae, [64]), "out of range"),
        (lambda sae: iv.zero_ablate(sae, [1, 1]), "duplicates"),
        (lambda sae: iv.clamp_latents(sae, [1, 2], [1.0, 2.0, 3.0]), "one per latent"),
        (lambda sae: iv.scale_latents(sae, [1], float("nan")), "non-finite"),
        (lambda sae: iv.mean_ablate(sae, [1], torch.zeros(10)), "d_sae"),
        (lambda sae: iv.static_clamp(sae, [1], -5), "non-negative"),
    ],
)
def test_bad_input(build, match):
    with pytest.raises(ValueError, match=match):
        build(make_sae())


def test_mask_of_wrong_shape_is_a_clear_error(tiny_gpt2):
    spec = iv.zero_ablate(make_sae(), [0], where=torch.ones(1, 99, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not fit"):
        with dsg.scoped_hooks(tiny_gpt2, spec):
            tiny_gpt2(_tokens(tiny_gpt2))
    assert dsg.attached_hooks(tiny_gpt2) == []


# ------------------------------------------------------------------------------------------- ablation study
def test_ablation_study_table(tiny_gpt2, tmp_path):
    from dsg_lens.ablation import COLUMNS, ablation_study, write_table

    sae = make_sae()
    corpus = texts(8, 5, False)
    tokens = _tokens(tiny_gpt2)
    before, _, _ = _capture(tiny_gpt2, tiny_gpt2.to_tokens(corpus, padding_side="right"))
    live = _live_latents(sae, before, k=2)
    dead = _kill_latent(sae, before)
    def probe(model) -> float:  # any model -> float, like an MCQ accuracy
        with torch.no_grad():
            return float(model(tokens)[0, -1].softmax(-1).max())

    rows = ablation_study(tiny_gpt2, sae, [*live, dead], corpus, score=probe, batch_size=2, progress=False)
    assert [(r["ablation"], r["latent"]) for r in rows] == [
        ("none", None), ("single", live[0]), ("single", live[1]), ("single", dead), ("all", None)]
    assert rows[-1]["latents"] == [*live, dead] and all(set(r) == set(COLUMNS) for r in rows)
    # the baseline loss by hand: mean -log p(next token) where input and target are real (BOS is neither)
    seqs = [tiny_gpt2.to_tokens(t)[0] for t in corpus]
    nll = [-tiny_gpt2(s[None])[0, 1:-1].log_softmax(-1).gather(-1, s[2:, None]).squeeze(-1) for s in seqs]
    by_hand = torch.cat(nll).double().mean().item()
    assert rows[0]["n_tokens"] == sum(s.numel() - 2 for s in seqs)
    assert abs(rows[0]["loss"] - by_hand) < 1e-5
    dead_row = rows[3]
    assert dead_row["delta_loss"] == 0.0 and dead_row["delta_accuracy"] == 0.0
    assert all(r["delta_loss"] != 0.0 for r in (rows[1], rows[2], rows[4]))
    csv_path, json_path = write_table(rows, tmp_path / "ablation")
    header, *lines = csv_path.read_text().splitlines()
    assert header.split(",") == list(COLUMNS) and len(lines) == len(rows)
    import json

    stored = json.loads(json_path.read_text())
    assert stored["schema_version"] == 1 and stored["rows"] == rows


def test_ablation_study_mean_mode_and_bad_input(tiny_gpt2):
    from dsg_lens.ablation import ablation_study

    sae = make_sae()
    corpus = texts(8, 3, False)
    with pytest.raises(ValueError, match="means="):
        ablation_study(tiny_gpt2, sae, [1], corpus, mode="mean", progress=False)
    with pytest.raises(ValueError, match="unknown mode"):
        ablation_study(tiny_gpt2, sae, [1], corpus, mode="half", progress=False)
    with pytest.raises(ValueError, match="empty"):
        ablation_study(tiny_gpt2, sae, [], corpus, progress=False)
    stats = dsg.collect_latent_stats(tiny_gpt2, sae, corpus, progress=False)
    rows = ablation_study(tiny_gpt2, sae, [1, 2], corpus, mode="mean", means=stats, together=False, progress=False)
    assert [r["ablation"] for r in rows] == ["none", "single", "single"]
    assert all(r["mode"] == "mean" and r["accuracy"] is None for r in rows)
