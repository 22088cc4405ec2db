"""The Gemma-2-2B-shaped benchmark model (config shapes, shrunk builds), the GPU check's bench entry point on a
2-layer dry run, and the tests' device option (DSG_TEST_DEVICE, default cpu)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import DEVICE_ENV, TEST_DEVICE, check_test_device, make_sae, resolve_test_device
from dsg_lens.bench_models import (
    GOAL,
    PAPER_TABLE_15,
    fit_hook_to_layers,
    format_table,
    gemma2_2b_config,
    goal_verdict,
    main,
    random_gemma2_2b,
)


def test_config_has_gemma2_2b_shapes():
    cfg = gemma2_2b_config()
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.n_key_value_heads) == (2304, 26, 8, 256, 4)
    assert (cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (9216, 256000, 8192)
    assert cfg.act_fn == "gelu_pytorch_tanh" and cfg.gated_mlp
    assert cfg.normalization_type == "RMS" and cfg.final_rms and cfg.use_normalization_before_and_after
    assert cfg.positional_embedding_type == "rotary" and cfg.rotary_dim == 256
    assert (cfg.attn_scores_soft_cap, cfg.output_logits_soft_cap) == (50.0, 30.0)
    assert cfg.use_local_attn and cfg.window_size == 4096 and cfg.attn_types == ["local", "global"] * 13
    assert cfg.tokenizer_name is None  # nothing to download


def test_config_matches_transformer_lens_conversion():
    """Every field TransformerLens sets for google/gemma-2-2b (its gemma-2 branch is name-based: no download)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    official = convert_hf_model_config("google/gemma-2-2b")
    cfg = gemma2_2b_config().to_dict()
    for key, value in official.items():
        if key in ("tokenizer_name", "quantization_method"):
            continue
        assert cfg[key] == value, key


def test_shrunk_config_and_model():
    cfg = gemma2_2b_config(n_layers=3, d_vocab=100, n_ctx=32)
    assert (cfg.n_layers, cfg.d_vocab, cfg.n_ctx, cfg.d_model, cfg.d_mlp) == (3, 100, 32, 2304, 9216)
    assert cfg.attn_types == ["local", "global", "local"]
    with pytest.raises(ValueError, match="n_layers"):
        gemma2_2b_config(n_layers=0)
    model = random_gemma2_2b("cpu", torch.float32, 1, d_vocab=64, n_ctx=16)
    block = model.blocks[0]
    assert hasattr(block, "ln1_post") and hasattr(block, "ln2_post")  # Gemma 2's post-norms
    assert block.attn.W_Q.shape == (8, 2304, 256) and block.attn._W_K.shape == (4, 2304, 256)
    assert block.mlp.W_gate.shape == (2304, 9216)
    assert not model.training and model.W_E.std().item() == pytest.approx(0.02, rel=0.1)


def test_fit_hook_to_layers():
    assert fit_hook_to_layers("blocks.3.hook_resid_post", 26) == "blocks.3.hook_resid_post"
    assert fit_hook_to_layers("blocks.3.hook_resid_post", 2) == "blocks.0.hook_resid_post"
    assert fit_hook_to_layers("blocks.3.hook_resid_post", 4) == "blocks.2.hook_resid_post"
    assert fit_hook_to_layers("blocks.3.hook_resid_post", 1) == "blocks.0.hook_resid_post"


def test_dry_run_entry_point(tmp_path, capsys):
    """`python -m dsg_lens.bench_models` on a 2-layer shrunk model on the CPU: JSON per run, summary, table."""
    out = tmp_path / "gpu"
    summary = main(["--out", str(out), "--device", "cpu", "--n-layers", "2", "--d-vocab", "512", "--n-ctx", "64",
                    "--seq-lens", "8", "--dtypes", "float32", "--d-sae", "256", "--calibration-tokens", "64",
                    "--repeats", "1", "--warmup", "0", "--no-progress"])
    result = json.loads((out / "gemma2-2b-shaped_float32_b1x8.json").read_text())
    assert result["config"]["sae_architecture"] == "jumprelu" and result["config"]["d_sae"] == 256
    assert result["config"]["hook_name"] == "blocks.0.hook_resid_post" and result["config"]["batch"] == 1
    assert result["forward"]["checks"]["not_fired_bit_identical_to_plain"]
    assert set(result["forward"]["variants"]) == {"plain", "guard_fired", "guard_not_fired", "reference_full_sae",
                                                  "static_clamp"}
    assert result["bench_model"]["n_layers"] == 2 and result["bench_model"]["d_model"] == 2304
    assert 0.002 < result["bench_model"]["sae"]["fire_rate_measured"] < 0.2
    assert all(v.startswith("skipped") for v in result["host_sync_in_hook"].values())
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    table = (out / "table.md").read_text()
    assert "paper Table 15" in table and "| float32 | 1x8 |" in table and "not judged" not in table
    assert "GPU check bench" in capsys.readouterr().out


def test_table_and_goal_verdict():
    row = {"dtype": "bfloat16", "batch": 1, "seq_len": 256, "plain_ms": 20.0, "dsg_fired": 1.004,
           "dsg_not_fired": 1.002, "dsg_hook_share": 0.003, "reference_full_sae": 1.05, "static_clamp": 1.001,
           "paper_table_15": PAPER_TABLE_15[256], "not_fired_bit_identical": True,
           "fast_vs_reference_max_rel_diff": 1e-3, "host_sync_in_hook": {"guard_fired": "none"}}
    assert GOAL == {"seq_len": 256, "dtype": "bfloat16", "max_ratio": 1.01}
    assert ": met" in goal_verdict([row], "cuda")
    assert "NOT met" in goal_verdict([{**row, "dsg_fired": 1.02}], "cuda")
    assert "not judged" in goal_verdict([row], "cpu")
    assert "not measured" in goal_verdict([{**row, "seq_len": 512}], "cuda")
    table = format_table([row], "header")
    assert "+7.3%" in table and "1.004x (+0.4%)" in table and "| none |" in table


def test_test_device_option_defaults_to_cpu(monkeypatch, tiny_gpt2, tiny_device):
    if not os.environ.get(DEVICE_ENV, "").strip():  # this run did not ask for a device
        assert TEST_DEVICE == "cpu" and tiny_device == torch.device("cpu")
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_test_device() == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "  ")
    assert resolve_test_device() == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert resolve_test_device() == "cuda"
    # the tiny models and SAEs of this run are on the run's device
    assert tiny_device == torch.device(TEST_DEVICE)
    assert torch.device(tiny_gpt2.cfg.device).type == tiny_device.type == tiny_gpt2.W_E.device.type
    assert make_sae().W_dec.device.type == tiny_device.type


def test_test_device_check_is_clear():
    assert check_test_device("cpu") == "cpu"
    with pytest.raises(pytest.UsageError, match="not a torch device"):
        check_test_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(pytest.UsageError, match="sees no CUDA device"):
            check_test_device("cuda")
