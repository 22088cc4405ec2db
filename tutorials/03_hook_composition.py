# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Hook composition: a guardrail, an ablation and a cache on one model
#
# dsg-lens has one hook mechanism: a `HookSpec` (HookPoint name, function, `order`, `label`), attached scoped with
# `with dsg.scoped_hooks(model, *specs):` or persistently with `dsg.attach(model, *specs)`. The DSG guardrail, static
# clamping and latent ablations are all `HookSpec`s, so they stack, and `describe_hooks(model)` shows what is live.
#
# This tutorial builds a tiny model in a few seconds (no download): a word-level vocabulary where the "forget"
# words `cat dog fox` share an embedding direction, and an SAE whose latent 5 reads exactly that direction.
# (Runs as a plain script: `python tutorials/03_hook_composition.py`.)

# %%
import tempfile
import warnings

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import dsg_lens as dsg
from dsg_lens import interventions as iv
from dsg_lens.ablation import ablation_study
from dsg_lens.hooks import describe_hooks

warnings.filterwarnings("ignore", category=DeprecationWarning)  # TransformerLens 3.x: HookedTransformer -> 4.0
torch.set_grad_enabled(False)  # inference only
torch.manual_seed(0)
words = [f"w{i}" for i in range(44)] + ["cat", "dog", "fox"]
raw = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(["<bos>", "<eos>", "<pad>", *words])},
                                 unk_token="<pad>"))
raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
folder = tempfile.mkdtemp()
PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>").save_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)

cfg = HookedTransformerConfig(
    n_layers=2, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_mlp=32, d_vocab=len(tokenizer), act_fn="silu",
    normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4, gated_mlp=True, device="cpu", seed=0,
)
model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
forget_ids = tokenizer.convert_tokens_to_ids(["cat", "dog", "fox"])
with torch.no_grad():  # the forget words share direction 0 of the embedding
    model.W_E[:, 0] = 0.0
    model.W_E[forget_ids, 0] = 3.0

HOOK = "blocks.0.hook_resid_pre"
sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, metadata=SAEMetadata(hook_name=HOOK)))
with torch.no_grad():
    sae.W_enc.normal_(0, 0.5)
    sae.W_dec.normal_(0, 0.3)
    sae.b_enc.fill_(-0.5)
    sae.b_dec.zero_()
    sae.W_enc[0, :] = 0.0
    sae.W_enc[0, 5], sae.b_enc[5] = 1.0, -1.5  # latent 5 fires only on forget words
    sae.W_dec[5] = 0.0
    sae.W_dec[5, 0] = 2.0


def corpus(seed: int, n: int, forget: bool) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ws = [words[int(i)] for i in torch.randint(0, 44, (10,), generator=gen)]
        if forget:
            ws[2], ws[6] = "cat", "fox"
        out.append(" ".join(ws))
    return out


forget_texts, retain_texts = corpus(1, 16, True), corpus(2, 16, False)

# %% [markdown]
# ## Fit a guardrail (the core pipeline)

# %%
forget = dsg.collect_latent_stats(model, sae, forget_texts, progress=False)
retain = dsg.collect_latent_stats(model, sae, retain_texts, progress=False)
features = dsg.select_features(forget, retain, n=1)
guard = dsg.DynamicSAEGuardrail.fit(model, sae, features, retain_texts, p_dyn=95, clamp=20.0, progress=False)
print(features.ids, guard)

# %% [markdown]
# ## Stack the guardrail with an ablation and a cache
#
# Within one `scoped_hooks(...)` call, specs on the same HookPoint run by ascending `order` (the guardrail uses 0,
# interventions 10, `cache_spec` 100); across calls, the outer (earlier) attachment runs first. So the cache below
# sees the activation after both the guardrail and the ablation of latent 3.

# %%
store: dict = {}
tokens = model.to_tokens(corpus(3, 2, True) + corpus(4, 2, False), padding_side="right")
with guard.attached(model):
    with dsg.scoped_hooks(model, iv.zero_ablate(sae, 3), iv.cache_spec(HOOK, store, key="edited")):
        print(describe_hooks(model))
        edited_logits = model(tokens)
print(describe_hooks(model))  # nothing left behind

with dsg.scoped_hooks(model, iv.cache_spec(HOOK, store, key="clean")):
    clean_logits = model(tokens)
changed = (store["edited"] != store["clean"]).any(-1)
print("positions changed per row (forget, forget, retain, retain):", changed.sum(-1).tolist())

# %% [markdown]
# ## Static clamping (the baseline without a gate) and a steering vector
#
# `static_clamp` sets each latent to `-multiplier` wherever it fires, on every text; `steer_latents` adds along a
# latent's decoder row. Both are `HookSpec`s too.

# %%
with dsg.scoped_hooks(model, iv.static_clamp(sae, features.ids, 20.0), iv.cache_spec(HOOK, store, key="static")):
    model(tokens)
print("static clamp changed positions:", (store["static"] != store["clean"]).any(-1).sum(-1).tolist())
with dsg.scoped_hooks(model, iv.steer_latents(sae, 5, 4.0, only_where_active=False)):
    steered = model(tokens)
print("steering latent 5 moves the logits by", float((steered - clean_logits).abs().max()))

# %% [markdown]
# ## Ablation study: what does each latent do to the loss?

# %%
rows = ablation_study(model, sae, [5, 3, 7], forget_texts + retain_texts, progress=False)
for row in rows:
    print(f"{row['ablation']:>6} {str(row['latent']):>4}  loss {row['loss']:.4f}  delta {row['delta_loss']:+.4f}")
