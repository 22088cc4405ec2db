# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # DSG on Gemma-2-2B-it with Gemma Scope (GPU, needs the network)
#
# The DSG paper's setting: gemma-2-2b-it in fp32, the Gemma Scope residual SAE
# `gemma-scope-2b-pt-res` / `layer_3/width_16k/average_l0_142` (JumpReLU, `blocks.3.hook_resid_post`, 16384
# latents; trained on the base model and applied to the -it model), the WMDP-Cyber forget corpus, WikiText-2 as
# retain corpus, WMDP-Cyber questions to forget and four MMLU subjects to retain.
#
# Requirements: a CUDA GPU with >= 24 GB (fp32 2B model + activations), `pip install dsg-lens`, a Hugging Face
# account that accepted the Gemma licence (`huggingface-cli login`). Cells marked **[hub]** download from the
# Hugging Face Hub (model ~10 GB, SAE ~300 MB, datasets); everything after them runs from the local cache.
# This tutorial is not executed by the test suite.

# %%
import warnings
from pathlib import Path

import torch
from sae_lens import SAE

import dsg_lens as dsg
from dsg_lens.data.loaders import load_mmlu, load_wikitext, load_wmdp, load_wmdp_corpus
from dsg_lens.eval.gate_stats import gate_firing
from dsg_lens.eval.mcq import filter_base_correct, score_mcq
from dsg_lens.eval.sweep import run_sweep
from dsg_lens.models import load_model
from dsg_lens.viz.render import render_figures
from dsg_lens.viz.token_views import gate_view, top_examples_view

warnings.filterwarnings("ignore", category=DeprecationWarning)
torch.set_grad_enabled(False)
assert torch.cuda.is_available(), "this tutorial needs a CUDA GPU"
results = Path("results/gemma-2-2b-it-cyber")
results.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## [hub] Model and SAE

# %%
model = load_model("gemma-2-2b-it", device="cuda", dtype=torch.float32)  # [hub]
sae = SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142", device="cuda")  # [hub]
# Gemma Scope was trained on the base model (gemma-2-2b); the paper applies it to the -it model, which shares
# its early layers closely. dsg-lens refuses a model-name mismatch unless told explicitly:
sae.cfg.metadata.model_name = None
print(sae.cfg.metadata.hook_name, sae.cfg.d_sae)

# %% [markdown]
# ## [hub] Data: WMDP-Cyber forget corpus, WikiText-2 retain corpus, WMDP-Cyber and MMLU questions
# (The WMDP-Bio forget corpus is gated: request access from its authors and pass the local file to
# `dsg_lens.data.loaders.load_corpus`.)

# %%
forget_texts = load_wmdp_corpus("cyber-forget", min_chars=51)  # [hub]
retain_texts = load_wikitext(min_chars=51)  # [hub]
forget_q = load_wmdp("cyber")  # [hub]
retain_q = [q for subject in ("high_school_us_history", "college_computer_science", "high_school_geography",
                              "human_aging") for q in load_mmlu(subject)]  # [hub]

# %% [markdown]
# ## Statistics, selection, calibration (the paper's chunking: 1024-token chunks, equal counts)

# %%
n_chunks = 1024
forget_chunks = dsg.chunk_corpus(model, forget_texts, chunk_len=1024, max_chunks=n_chunks)
retain_chunks = dsg.chunk_corpus(model, retain_texts, chunk_len=1024, max_chunks=n_chunks)
n_chunks = min(len(forget_chunks), len(retain_chunks))
forget_chunks, retain_chunks = forget_chunks[:n_chunks], retain_chunks[:n_chunks]

forget_stats = dsg.collect_latent_stats(model, sae, forget_chunks, batch_size=4)
retain_stats = dsg.collect_latent_stats(model, sae, retain_chunks, batch_size=4)
forget_stats.save(results / "stats_forget")
retain_stats.save(results / "stats_retain")
features = dsg.select_features(forget_stats, retain_stats, n=30, p_ratio=90)  # the paper's cyber setting
# The paper's setting: its per-sequence gate ("paper", not causal: right here, where the chat protocol reads one
# answer position per pass) calibrated on the retain chunks. For continuations and generation use the default
# causal gate, calibrated on retain inputs shaped like the questions.
guard = dsg.DynamicSAEGuardrail.fit(model, sae, features, retain_chunks, p_dyn=95, clamp=500, gate="paper",
                                    batch_size=4)
guard.save(results / "guardrail")
print(guard)

# %% [markdown]
# ## Evaluation on base-correct questions (chat protocol, all 24 choice orderings)

# %%
forget_q = filter_base_correct(model, forget_q, "chat")
retain_q = filter_base_correct(model, retain_q, "chat")


def evaluate(m) -> dict[str, float]:
    return {"forget_acc": score_mcq(m, forget_q, "chat", progress=False).accuracy,
            "retain_acc": score_mcq(m, retain_q, "chat", progress=False).accuracy}


base = evaluate(model)
with guard.attached(model):
    dsg_metrics = evaluate(model)
print("base:", base, "\nDSG: ", dsg_metrics)  # paper (cyber): forget 26.74%, retain ~99.7% of base

# %% [markdown]
# ## Gate statistics, a sweep, and the figures

# %%
gate = gate_firing(guard, model, [q.question for q in forget_q], [q.question for q in retain_q])
(results / "report.json").write_text(__import__("json").dumps({"base": base, "dsg": dsg_metrics, "gate": gate}))
sweep = run_sweep(model, sae, forget_stats, retain_stats, retain_chunks, evaluate, n_values=(10, 20, 30, 50),
                  clamp_values=(50.0, 100.0, 250.0, 500.0), base=base, batch_size=4)
sweep.save(results / "sweep")
print("unlearning score:", sweep.score())
print(render_figures(results, results / "figures"))

# %% [markdown]
# ## Token views: where the selected latents fire, and their top corpus examples

# %%
gate_view(model, guard, forget_q[0].question).save(results / "gate_view.html")
top_examples_view(model, sae, forget_chunks[:64], features.ids[:10], k=5).save(results / "top_examples.html")
gate_view(model, guard, forget_q[0].question)
