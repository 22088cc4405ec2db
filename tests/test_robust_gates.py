"""Gates beyond the paper's (issue 17): the count gate (window / latest user turn), the probe gate and OR
combinations; the linear probe; all inside the guardrail hook.

Independent references: loops over positions for the statistics, a plain-model hook that runs SAELens's own
encode/decode with the gate decided offline, one-at-a-time runs for batches, uncached runs for KV caches, the
pairwise AUROC, the first-order optimality condition of the logistic objective.
"""

from __future__ import annotations

import pytest
import torch
from chat_helpers import chat_model, chat_tokenizer
from conftest import make_model, planted_setup, texts
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_mcq import word_texts

import dsg_lens as dsg
from dsg_lens.gate import (
    AnyGate,
    CountGate,
    ProbeGate,
    WindowGate,
    calibrate_gate,
    calibrate_tau,
    gate_from_dict,
    gate_tensors,
)
from dsg_lens.probe import LinearProbe, auroc, fit_logistic, train_probe
from dsg_lens.real_tokens import RealTokenRule
from dsg_lens.studies.gate_shapes import auroc as pairwise_auroc


# ------------------------------------------------------------------------------------------ naive references
def naive_scope(real: list[bool], t: int, window: int | None, turn_start: list[bool] | None) -> list[int]:
    """Positions of the real tokens in the scope at position t (loops, no tensor arithmetic)."""
    start = 0
    if turn_start is not None:
        opened = [i for i in range(t + 1) if turn_start[i]]
        start = opened[-1] if opened else 0
    seen = [i for i in range(start, t + 1) if real[i]]
    return seen if window is None else seen[-window:]


def naive_count(fired, real, window, turn_start, min_tokens):
    out = []
    for t in range(len(real)):
        if sum(real[: t + 1]) < min_tokens:
            out.append(-1.0)
        else:
            out.append(float(sum(fired[i] for i in naive_scope(real, t, window, turn_start))))
    return out


def naive_probe(logits, real, window, reduce, min_tokens):
    out = []
    for t in range(len(real)):
        scope = naive_scope(real, t, window, None)
        if sum(real[: t + 1]) < min_tokens:
            out.append(-1.0)
        elif not scope:
            out.append(float("-inf") if reduce == "max" else 0.0)
        else:
            probs = [torch.sigmoid(torch.tensor(logits[i])).item() for i in scope]
            out.append(max(probs) if reduce == "max" else sum(probs) / len(probs))
    return out


def _probe(d_in: int = 4, hook: str = "blocks.0.hook_resid_pre", device=None) -> LinearProbe:
    weight = torch.arange(1.0, d_in + 1)
    return LinearProbe(weight if device is None else weight.to(device), -0.5, hook)


flags = st.lists(st.booleans(), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_count_gate_statistic_matches_a_loop(data):
    length = data.draw(st.integers(1, 30))
    draw = lambda: data.draw(st.lists(st.booleans(), min_size=length, max_size=length))  # noqa: E731
    fired, real, turns = draw(), draw(), draw()
    window = data.draw(st.one_of(st.none(), st.integers(1, 8)))
    min_tokens = data.draw(st.integers(1, 4))
    for turn in (False, True):
        gate = CountGate(1.5, window=window, turn=turn, min_tokens=min_tokens)
        extras = {"turn_start": torch.tensor([turns])} if turn else {}
        got = gate.statistic(torch.tensor([fired]), torch.tensor([real]), **extras)[0].tolist()
        assert got == naive_count(fired, real, window, turns if turn else None, min_tokens)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_probe_gate_statistic_matches_a_loop(data):
    length = data.draw(st.integers(1, 30))
    real = data.draw(st.lists(st.booleans(), min_size=length, max_size=length))
    logits = data.draw(st.lists(st.floats(-6, 6), min_size=length, max_size=length))
    window, min_tokens = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 4))
    for reduce in ("mean", "max"):
        gate = ProbeGate(_probe(), window=window, reduce=reduce, min_tokens=min_tokens)
        got = gate.statistic(torch.zeros(1, length, dtype=torch.bool), torch.tensor([real]),
                             probe=torch.tensor([logits]))[0]
        torch.testing.assert_close(got, torch.tensor(naive_probe(logits, real, window, reduce, min_tokens)),
                                   atol=1e-6, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_new_gates_are_causal_and_scores_agree_with_decisions(data):
    length = data.draw(st.integers(2, 30))
    draw = lambda: torch.tensor([data.draw(st.lists(st.booleans(), min_size=length, max_size=length))])  # noqa: E731
    fired, real, turns = draw(), draw(), draw()
    logits = torch.tensor([data.draw(st.lists(st.floats(-4, 4), min_size=length, max_size=length))])
    extras = {"turn_start": turns, "probe": logits}
    cut = data.draw(st.integers(1, length))
    count = CountGate(data.draw(st.floats(0, 3)), window=data.draw(st.integers(1, 6)))
    turn = CountGate(data.draw(st.floats(0, 3)), window=None, turn=True, latch=data.draw(st.booleans()))
    probe = ProbeGate(_probe(), tau=data.draw(st.floats(0.1, 0.9)), window=4,
                      reduce=data.draw(st.sampled_from(["mean", "max"])), min_tokens=2)
    for gate in (count, turn, probe, AnyGate((count, probe)), AnyGate((turn, WindowGate(0.3, window=3)))):
        needed = {k: v for k, v in extras.items() if k in gate.needs}
        full = gate.decisions(fired, real, **needed)
        head = gate.decisions(fired[:, :cut], real[:, :cut], **{k: v[:, :cut] for k, v in needed.items()})
        assert torch.equal(head, full[:, :cut])
        assert bool(gate.scores(fired, real, **needed)[0] > gate.tau) == bool(full[0, -1])


def test_any_gate_is_the_or_of_its_gates_and_calibrates_jointly():
    gen = torch.Generator().manual_seed(0)
    fired, real = torch.rand(200, 20, generator=gen) < 0.2, torch.rand(200, 20, generator=gen) < 0.9
    logits = torch.randn(200, 20, generator=gen)
    window, probe = WindowGate(0.3, window=4, min_tokens=2), ProbeGate(_probe(), tau=0.7, window=4, min_tokens=2)
    both = AnyGate((window, probe))
    assert both.needs == ("probe",) and both.causal
    expected = window.decisions(fired, real) | probe.decisions(fired, real, probe=logits)
    assert torch.equal(both.decisions(fired, real, probe=logits), expected)
    calibrated = calibrate_gate(both, fired, real, 90, probe=logits)
    scores = [g.calibration_scores(fired, real, **({"probe": logits} if g.needs else {})) for g in both.gates]
    union = torch.stack([s > g.tau for s, g in zip(scores, calibrated.gates)]).any(0).double().mean()
    assert float(union) <= 0.10 + 1e-9 and 90 <= calibrated.level <= 100
    for s, g in zip(scores, calibrated.gates):
        assert g.tau == pytest.approx(calibrate_tau(s, calibrated.level))
    # one step lower and the union would fire on more than 10% (the level is the lowest that fits)
    if calibrated.level > 90:
        lower = [calibrate_tau(s, calibrated.level - 0.05) for s in scores]
        assert float(torch.stack([s > t for s, t in zip(scores, lower)]).any(0).double().mean()) > 0.10
    with pytest.raises(ValueError, match="at least two"):
        AnyGate((window,))


def test_round_trips_and_bad_input():
    probe = _probe()
    gates = [CountGate(2.5, window=16), CountGate(1.0, window=None, turn=True, min_tokens=3),
             ProbeGate(probe, tau=0.4, window=8, reduce="max"),
             AnyGate((CountGate(2.0), ProbeGate(probe, tau=0.6)), level=97.5)]
    for gate in gates:
        assert gate_from_dict(gate.to_dict(), gate_tensors(gate)) == gate
    with pytest.raises(ValueError, match="weight"):
        gate_from_dict(gates[2].to_dict(), {})
    with pytest.raises(ValueError, match="reduce"):
        ProbeGate(probe, reduce="median")
    with pytest.raises(ValueError, match="window"):
        CountGate(window=0)
    with pytest.raises(ValueError, match="needs the per-token input 'probe'"):
        gates[2].scores(torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises((ValueError, TypeError), match="probe"):  # TypeError from the tests' runtime type checks
        ProbeGate("not a probe")


# ------------------------------------------------------------------------------------------------ the probe
def test_auroc_matches_the_pairwise_definition():
    gen = torch.Generator().manual_seed(1)
    pos, neg = torch.randint(0, 5, (40,), generator=gen).float(), torch.randint(0, 4, (30,), generator=gen).float()
    assert auroc(pos, neg) == pytest.approx(pairwise_auroc(pos, neg))


def test_logistic_fit_is_optimal_in_the_units_of_the_input():
    """The returned (w, b), in the input's units, zero the gradient of the stated objective: class-balanced
    BCE + l2/2 * ||w * std||^2 (the penalty is on the standardised weights)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0],
                                                                                dtype=torch.float64) + 4.0
    y = ((x[:, 0] - 4) + 0.1 * (x[:, 1] - 4) + 0.3 * torch.randn(400, generator=gen, dtype=torch.float64) > 0).double()
    weight, bias = fit_logistic(x, y, l2=1e-2, steps=200)
    w = weight.clone().requires_grad_(True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    sample = torch.where(y > 0.5, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    std = x.std(0)
    loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * sample).sum() \
        + 0.5 * 1e-2 * ((w * std) ** 2).sum()
    grad_w, grad_b = torch.autograd.grad(loss, (w, b))
    assert float((grad_w * std).abs().max()) < 1e-3 and abs(float(grad_b)) < 1e-3  # a wrong fold: ~0.1
    assert float(((x @ weight + bias > 0).double() == y).double().mean()) > 0.9


@pytest.fixture(scope="module")
def planted(tiny_tokenizer):
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    return model, sae


@pytest.fixture(scope="module")
def trained_probe(planted):
    model, _ = planted
    return train_probe(model, texts(10, 40, True), texts(11, 40, False), "blocks.0.hook_resid_pre", max_len=32,
                       progress=False)


def test_probe_separates_planted_forget_tokens(trained_probe, planted):
    """Tokens are labelled by their text's side, so the neutral words of forget texts blur the token-level AUROC
    (recorded in ``info``); the forget words themselves score above every token of retain texts."""
    model, _ = planted
    assert 0.5 < trained_probe.info["heldout_auroc"] <= 1 and trained_probe.info["n_train"]["forget"] > 0
    name = "blocks.0.hook_resid_pre"
    tokens = model.to_tokens("w1 cat w2 dog w3 fox w4 w5 w6 w7")
    acts = model.run_with_cache(tokens, names_filter=name)[1][name][0, 1:]
    logits = trained_probe.logits(acts)
    torch.testing.assert_close(logits, acts.float() @ trained_probe.weight.to(acts.device) + trained_probe.bias)
    forget = torch.tensor([w in ("cat", "dog", "fox") for w in model.to_str_tokens(tokens)[1:]])
    assert pairwise_auroc(logits[forget].cpu(), logits[~forget].cpu()) == 1.0


# ------------------------------------------------------------------------------- inside the guardrail hook
def _reference_logits(model, sae, gate, tokens, *, probe=None, turn_start=None, clamp=20.0):
    """The guardrail computed offline on a plain model: SAELens encode, the gate on the full sequence (extras
    from the probe's activation / the given turn starts), latents set to -clamp, SAELens decode + error."""
    name = sae.cfg.metadata.hook_name
    real = RealTokenRule.for_model(model).mask(tokens)
    seen = {}

    def read_probe(act, hook):
        seen["probe"] = act.float() @ probe.weight.to(act.device) + probe.bias

    def reference(resid, hook):
        if probe is not None and probe.hook_name == name:
            read_probe(resid, hook)
        acts = sae.encode(resid)
        fired = (acts[..., [5]] > 0).any(-1) & real
        extras = {"turn_start": turn_start, **seen}
        on = gate.decisions(fired, real, **{k: v for k, v in extras.items() if k in gate.needs}) & fired
        edited = acts.clone()
        edited[..., 5] = torch.where(on, torch.full_like(acts[..., 5], -clamp), acts[..., 5])
        return sae.decode(edited) + (resid - sae.decode(acts))

    earlier = [(probe.hook_name, read_probe)] if probe is not None and probe.hook_name != name else []
    return model.run_with_hooks(tokens, fwd_hooks=[*earlier, (name, reference)])


def _probe_on(model, hook="blocks.0.hook_resid_pre"):
    weight = torch.zeros(model.cfg.d_model)
    weight[0] = 2.0  # reads the planted forget direction
    return LinearProbe(weight, -3.0, hook)


def _gates(model):
    probe = _probe_on(model)
    return {
        "count": CountGate(1.5, window=4),
        "probe mean": ProbeGate(probe, tau=0.5, window=4, reduce="mean", min_tokens=2),
        "probe max": ProbeGate(probe, tau=0.5, window=3, reduce="max", min_tokens=2),
        "any": AnyGate((CountGate(2.5, window=4), ProbeGate(probe, tau=0.6, window=4, min_tokens=2))),
    }


@pytest.mark.parametrize("name", ["count", "probe mean", "probe max", "any"])
def test_hook_equals_the_offline_reference_batched_or_not(planted, name):
    model, sae = planted
    gate = _gates(model)[name]
    guard = dsg.DynamicSAEGuardrail(sae, [5], gate, clamp=20.0)
    prompts = ["w1 cat w2 dog w3 fox w4", "w1 w2 w3 w4 w5 w6", "cat dog w1"]
    probe = getattr(gate, "probe", None) or next((g.probe for g in getattr(gate, "gates", ()) if hasattr(g, "probe")),
                                                  None)
    with guard.attached(model):
        batched = model(model.to_tokens(prompts))
    edited = False
    for row, prompt in enumerate(prompts):
        tokens = model.to_tokens(prompt)
        with guard.attached(model):
            alone = model(tokens)
        reference = _reference_logits(model, sae, gate, tokens, probe=probe)
        torch.testing.assert_close(alone, reference, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched[row, : tokens.shape[1]], alone[0], atol=1e-4, rtol=1e-4)
        edited |= not torch.allclose(alone, model(tokens), atol=1e-4)
    assert edited  # the gate switched on somewhere: the comparison is not between two untouched runs


@pytest.mark.parametrize("name", ["count", "probe mean", "any"])
def test_cached_generation_equals_uncached(planted, name):
    model, sae = planted
    guard = dsg.DynamicSAEGuardrail(sae, [5], _gates(model)[name], clamp=20.0)
    fox = model.tokenizer.convert_tokens_to_ids("fox")
    saved = model.b_U[fox].item()
    try:
        with torch.no_grad():
            model.b_U[fox] = 8.0  # generations drift into forget words
        for prompt in ("w1 w2 w3", "w1 cat w2 dog"):
            tokens = model.to_tokens(prompt)
            with guard.attached(model):
                cached = model.generate(tokens, max_new_tokens=8, do_sample=False, use_past_kv_cache=True,
                                        verbose=False)
                uncached = model.generate(tokens, max_new_tokens=8, do_sample=False, use_past_kv_cache=False,
                                          verbose=False)
            assert torch.equal(cached, uncached)
    finally:
        with torch.no_grad():
            model.b_U[fox] = saved


def test_probe_at_an_earlier_block_is_observed_first(tiny_tokenizer):
    """Guardrail at blocks.1, probe at blocks.0: an observer records the probe's logits before the guardrail runs;
    outputs equal the offline reference, batched or not, and KV-cached generation equals uncached."""
    model = make_model("llama", tiny_tokenizer)
    sae, _ = planted_setup(model)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"  # the planted latent still reads the forget direction
    gate = ProbeGate(_probe_on(model, "blocks.0.hook_resid_pre"), tau=0.4, window=4, min_tokens=2)
    guard = dsg.DynamicSAEGuardrail(sae, [5], gate, clamp=20.0)
    assert [s.name for s in guard.hook_specs(model)] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    prompts = ["w1 cat w2 dog w3 fox", "w1 w2 cat w3"]
    with guard.attached(model):
        batched = model(model.to_tokens(prompts))
    for row, prompt in enumerate(prompts):
        tokens = model.to_tokens(prompt)
        with guard.attached(model):
            alone = model(tokens)
        torch.testing.assert_close(alone, _reference_logits(model, sae, gate, tokens, probe=gate.probe),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched[row, : tokens.shape[1]], alone[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], model(model.to_tokens(prompts))[0], atol=1e-4)
    with guard.attached(model):
        tokens = model.to_tokens("w1 cat w2 dog")
        cached = model.generate(tokens, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, verbose=False)
        uncached = model.generate(tokens, max_new_tokens=6, do_sample=False, use_past_kv_cache=False, verbose=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(ValueError, match="hook_specs"):
        guard.hook_spec(model)
    for late in ("blocks.1.hook_resid_post", "hook_embed"):  # after the guardrail / skipped by generate
        bad = dsg.DynamicSAEGuardrail(sae, [5], ProbeGate(_probe_on(model, late), tau=0.5), clamp=20.0)
        with pytest.raises(ValueError, match="probe"):
            bad.hook_specs(model)


def test_probe_gate_on_a_hooked_sae_transformer_with_the_sae_attached(tiny_tokenizer):
    """With add_sae the guardrail edits the latents; the probe reads the model's own activation (hook_sae_input):
    the same outputs as the plain model's offline reference (error term kept)."""
    from sae_lens import HookedSAETransformer

    model = make_model("llama", tiny_tokenizer, cls=HookedSAETransformer)
    sae, _ = planted_setup(model)
    gate = ProbeGate(_probe_on(model), tau=0.5, window=4, min_tokens=2)
    tokens = model.to_tokens(["w1 cat w2 dog w3", "w1 w2 w3 w4 w5"])
    expected = _reference_logits(model, sae, gate, tokens, probe=gate.probe)
    model.add_sae(sae, use_error_term=True)
    try:
        with dsg.DynamicSAEGuardrail(sae, [5], gate, clamp=20.0).attached(model):
            got = model(tokens)
    finally:
        model.reset_saes()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fit_calibrates_new_gates_like_the_others(planted, trained_probe, tmp_path):
    model, sae = planted
    calibration = word_texts(1, 40, n_forget=1)
    count = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, p_dyn=90, clamp=20.0,
                                        gate=CountGate(window=4), progress=False)
    tokens = [model.to_tokens(t)[0] for t in calibration]
    rule = RealTokenRule.for_model(model)
    maxima = []
    for row in tokens:
        real = rule.mask(row[None])[0].tolist()
        fired = [w in ("cat", "dog", "fox") for w in model.to_str_tokens(row)]
        maxima.append(max(max(naive_count(fired, real, 4, None, 1)), 0.0))
    assert count.gate.tau == pytest.approx(calibrate_tau(torch.tensor(maxima), 90))
    both = dsg.DynamicSAEGuardrail.fit(model, sae, [5], calibration, p_dyn=90, clamp=20.0, progress=False,
                                       gate=AnyGate((CountGate(window=4), ProbeGate(trained_probe, window=4))))
    assert float(both.is_forget(model, calibration).double().mean()) <= 0.10 + 1e-12
    both.save(tmp_path / "g")
    loaded = dsg.DynamicSAEGuardrail.load(tmp_path / "g", sae=sae)
    assert loaded.gate == both.gate
    probe_text = ["w1 cat w2 dog w3 fox w4 cat", "w1 w2 w3 w4"]
    assert torch.equal(loaded.gate_scores(model, probe_text), both.gate_scores(model, probe_text))


def test_latest_turn_count_gate_in_the_chat_template(tmp_path):
    """The turn-scoped count gate counts from the latest user turn (the rule's role tokens): an earlier turn's
    forget word does not add to the latest turn's (the window count adds them), a plain text counts everything;
    the hook equals the offline reference."""
    model, sae = chat_model(chat_tokenizer(tmp_path / "tok"))
    gate = CountGate(1.5, window=None, turn=True)
    guard = dsg.DynamicSAEGuardrail(sae, [5], gate, clamp=20.0)
    tokenizer = model.tokenizer

    def chat(*turns):
        messages = [{"role": r, "content": c} for r, c in turns]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    earlier = chat(("user", "cat w1"), ("assistant", "w2"), ("user", "w3 w4 dog"))  # one forget word per turn
    latest = chat(("user", "w1 w2"), ("assistant", "w2"), ("user", "w3 cat dog"))
    assert guard.is_forget(model, [earlier, latest, "w1 cat w2 dog"]).tolist() == [False, True, True]
    assert dsg.DynamicSAEGuardrail(sae, [5], CountGate(1.5, window=32), clamp=20.0).is_forget(model, [earlier]).item()
    tokens = model.to_tokens(latest + "w5 fox")
    starts = RealTokenRule.for_model(model).user_turn_starts(tokens)
    assert starts.sum() == 2
    with guard.attached(model):
        got = model(tokens)
    torch.testing.assert_close(got, _reference_logits(model, sae, gate, tokens, turn_start=starts),
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, model(tokens), atol=1e-4)
