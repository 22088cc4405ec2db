# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 04 — Baselines and attacks on the gate
#
# DSG's claims are comparative. This tutorial runs, on the embedded SmolLM2-135M-Instruct and its WordNet
# benchmark (forget domain: animals):
#
# 1. the side-by-side table: base / static SAE clamping (Farrell et al.) / RMU (Li et al.) / DSG with the paper's
#    gate / DSG with the dilution-robust window gate, with the measured cost of each unlearning step;
# 2. the dilution attack (benign filler before a forget question), paper gate vs window gate.
#
# Everything runs on CPU; questions are capped to keep it to a few minutes.

# %%
from dsg_lens.baselines import RMUConfig, StaticClamp, compare_methods, format_table, rmu_unlearn
from dsg_lens.gate import WindowGate
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import PipelineConfig, calibration_texts
from dsg_lens.studies import attack_study, default_attacks, load_setup

setup = load_setup(PipelineConfig(max_questions=40), progress=False)
model, sae = setup.model, setup.sae
print(model.cfg.model_name, sae.cfg.metadata.hook_name, len(setup.forget_questions), len(setup.retain_questions))

# %% [markdown]
# ## Static clamping: the same `attached(model)` interface as the guardrail

# %%
static = StaticClamp.fit(model, sae, setup.forget_texts, setup.retain_texts, n=20, multiplier=500, progress=False)
print(static)

# %% [markdown]
# ## RMU: returns a fine-tuned copy and a training log

# %%
rmu = rmu_unlearn(model, setup.forget_texts, setup.retain_texts, RMUConfig(layer=12, steps=20), progress=False)
print(rmu.log[0], rmu.log[-1])

# %% [markdown]
# ## The table (same evaluation code for every method)

# %%
result = compare_methods(model, sae, setup.forget_texts, setup.retain_texts, setup.forget_questions,
                         setup.retain_questions, rmu=RMUConfig(layer=12, steps=20), progress=False)
print(format_table(result))

# %% [markdown]
# ## Dilution: benign filler before the question
#
# The paper's rho (here in its causal form, the prefix gate: the fraction of the tokens so far on which a selected
# latent fires) is lowered below tau by filler. The window gate looks at the last 32 real tokens instead; both are
# calibrated at the 95th percentile on held-out retain questions, so their false-positive rates stay comparable.

# %%
calibration = calibration_texts(model, setup.config, setup.retain_texts)
paper = DynamicSAEGuardrail.fit(model, sae, result["methods"]["dsg_paper"]["features"], calibration,
                                gate="prefix", progress=False)
window = DynamicSAEGuardrail.fit(model, sae, paper.latent_ids, calibration, gate=WindowGate(window=32),
                                 progress=False)
attacks = default_attacks(model, setup.retain_texts, filler_tokens=(0, 128, 512), turns=(), paraphrases=())
dilution = attack_study(model, {"paper": paper, "window32": window}, setup.forget_questions,
                        setup.retain_questions, attacks, progress=False)
for row in dilution["attacks"]["dilution"]:
    print(row["strength"], row["base_acc"], row["guards"])
print("retain false-positive rates:", {k: v["fpr"] for k, v in dilution["retain"].items()})
