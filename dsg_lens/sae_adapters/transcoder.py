"""Transcoders (``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``, ``jumprelu_skip_transcoder``): they
read one hook and reconstruct another (e.g. MLP input -> MLP output), so an edit ``decode(a') - decode(a)`` belongs
to the output hook while ``a`` comes from the input hook. dsg-lens edits at one hook only: a transcoder is accepted
when it reconstructs the hook it reads (``d_out == d_in`` and ``cfg.metadata.hook_name_out`` equal to
``hook_name``), and then runs through the fallback (SAELens's own encode/decode; the skip connection of skip
transcoders is not part of ``decode`` and cancels in the edit).
"""

from __future__ import annotations

from sae_lens import SAE


def is_transcoder(sae: SAE) -> bool:
    return hasattr(sae.cfg, "d_out")


def check_one_hook(sae: SAE) -> None:
    """ValueError unless ``sae`` is not a transcoder, or a transcoder that reconstructs the hook it reads."""
    if not is_transcoder(sae):
        return
    d_in, d_out = int(sae.cfg.d_in), int(sae.cfg.d_out)
    arch = sae.cfg.architecture()
    if d_out != d_in:
        raise ValueError(
            f"the {arch} maps d_in={d_in} to d_out={d_out}: it reconstructs another activation than it reads, so "
            "its latents cannot be edited at one hook. Use an SAE trained at the hook you want to edit"
        )
    hook_in = getattr(sae.cfg.metadata, "hook_name", None)
    hook_out = getattr(sae.cfg.metadata, "hook_name_out", None)
    if hook_out is None or hook_out != hook_in:
        raise ValueError(
            f"the {arch} reads {hook_in!r} and reconstructs {hook_out!r}: an edit of its latents belongs to the "
            "output hook while the latents come from the input hook, which one hook cannot do. (A transcoder whose "
            "cfg.metadata.hook_name_out equals its hook_name is accepted.)"
        )
