"""What tests/test_distributed.py runs on 2 gloo processes (``torchrun --nproc-per-node 2``) and in one process:
statistics, the calibration scan behind ``DynamicSAEGuardrail.fit``, question scoring (sharded by dsg-lens), and
lm-eval over the ``dsg`` model (lm-eval's own data parallelism), on a tiny model.

``python distributed_worker.py OUT`` (under torchrun) writes each rank's results to ``OUT/rank<r>.json`` and
``OUT/rank<r>.safetensors``; :func:`compute` is the shared computation.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from conftest import SPECIALS, WORDS, make_model, planted_setup, texts
from safetensors.torch import save_file
from tiny_mcq import word_mcqs
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import dsg_lens as dsg
from dsg_lens import distributed
from dsg_lens.eval.mcq import continuation_log_probs, score_mcq
from dsg_lens.scan import scan_first_rank

BATCH = 3  # small batches: several per rank, an uneven last one
MAX_LEN = 8  # long texts are cut into windows that land in different batches (and on different ranks)


def tiny_tokenizer(folder: Path):
    """The word-level tokenizer of conftest's ``tiny_tokenizer`` fixture."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def setup(folder: Path):
    """(model, SAE with latent 5 planted on the forget words), the same in every process."""
    model = make_model("llama", tiny_tokenizer(folder))
    sae, _ = planted_setup(model)
    return model, sae


CLOZE_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
"""A local lm-eval task over cloze questions (``context``, ``choices``, ``answer``): each choice scored as a
continuation of the context (lm-eval's ``acc``: the summed log-prob)."""


def write_task(folder: Path, name: str, template: str, rows: list[dict]):
    """``folder/<name>.yaml`` over ``folder/<name>.jsonl``; the lm-eval TaskManager that finds it."""
    from lm_eval.tasks import TaskManager

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{name}.yaml").write_text(template.format(name=name, data=data))
    return TaskManager(include_path=str(folder))


def lm_eval_results(model, guard, folder: Path) -> dict | None:
    """lm-eval over the ``dsg`` model with ``guard`` on a local cloze task: accuracy and every request's
    loglikelihood (None on ranks other than 0, where lm-eval returns nothing, or without lm-eval)."""
    try:
        import lm_eval

        from dsg_lens.lm_eval_model import DSGLM
    except ModuleNotFoundError:
        return None
    questions = word_mcqs(26, 9, forget=True) + word_mcqs(27, 7, forget=False)
    rows = [{"context": q.context, "choices": list(q.choices), "answer": q.answer} for q in questions]
    manager = write_task(folder, "dsg_dp_cloze", CLOZE_TASK, rows)
    out = lm_eval.simple_evaluate(model=DSGLM(model=model, guardrail=guard, batch_size=BATCH, progress=False),
                                  tasks=["dsg_dp_cloze"], task_manager=manager, log_samples=True, bootstrap_iters=0)
    if out is None:
        return None
    samples = sorted(out["samples"]["dsg_dp_cloze"], key=lambda sample: sample["doc_id"])
    return {"acc": out["results"]["dsg_dp_cloze"]["acc,none"], "n": len(samples),
            "lls": [[resp[0][0] for resp in sample["resps"]] for sample in samples]}


def compute(model, sae, checkpoint_dir: Path) -> tuple[dict, dict[str, torch.Tensor], dsg.DynamicSAEGuardrail]:
    """Statistics, selection, calibration, scan and scoring: (JSON-ready results, tensors, the guardrail)."""
    forget_texts = texts(21, 17, True, length=(4, 20))
    retain_texts = texts(22, 13, False, length=(4, 20))
    forget = dsg.collect_latent_stats(model, sae, forget_texts, features=[5, 7], batch_size=BATCH, max_len=MAX_LEN,
                                      progress=False)
    retain = dsg.collect_latent_stats(model, sae, retain_texts, batch_size=BATCH, max_len=MAX_LEN, progress=False,
                                      checkpoint_dir=checkpoint_dir, checkpoint_every=1)
    features = dsg.select_features(forget, retain, n=3, p_ratio=50)
    guard = dsg.DynamicSAEGuardrail.fit(model, sae, features, retain_texts + texts(23, 5, True), p_dyn=80,
                                        clamp=20.0, gate=dsg.WindowGate(window=6, min_tokens=2), batch_size=BATCH,
                                        progress=False)
    scan = scan_first_rank(model, sae, features.ids, forget_texts + retain_texts, batch_size=BATCH, max_len=MAX_LEN)
    questions = word_mcqs(24, 11, forget=True) + word_mcqs(25, 9, forget=False)
    base = score_mcq(model, questions, "completion", batch_size=BATCH, progress=False)
    with guard.attached(model):
        guarded = score_mcq(model, questions, "completion", completion_score="sum", batch_size=BATCH,
                            progress=False)
        full = continuation_log_probs(model, [(q.context, c) for q in questions for c in q.candidates],
                                      batch_size=BATCH, use_kv_cache=False)
    results = {
        "features": features.ids, "tau": guard.gate.tau, "resid_norm": guard.resid_norm,
        "scan_mean_resid_norm": scan.mean_resid_norm, "n_tokens": [forget.n_tokens, retain.n_tokens],
        "base": [list(r.scores) for r in base.records], "guarded": [list(r.scores) for r in guarded.records],
        "base_acc": base.accuracy, "guarded_acc": guarded.accuracy,
    }
    tensors = {"forget_act_sum": forget.act_sum, "forget_act_sq_sum": forget.act_sq_sum,
               "forget_fire_count": forget.fire_count, "forget_rho": forget.rho, "retain_act_sum": retain.act_sum,
               "full": torch.cat(full)}
    for i, (first, real) in enumerate(zip(scan.first_rank, scan.real)):
        tensors[f"first_rank_{i}"], tensors[f"real_{i}"] = first, real
    return results, tensors, guard


def main(out: Path) -> None:
    rank, world = distributed.init_from_env()
    assert world == 2, f"expected 2 processes, got {world}"
    with tempfile.TemporaryDirectory() as tmp:
        model, sae = setup(Path(tmp))
        with distributed.sharded():
            results, tensors, guard = compute(model, sae, out / "checkpoints")
        results["lm_eval"] = lm_eval_results(model, guard, Path(tmp) / "tasks")  # lm-eval splits the requests
    results["rank"] = rank
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
    distributed.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
