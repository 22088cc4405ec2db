"""Sharding over torch.distributed: 2 gloo processes on the CPU (torchrun) give what one process gives, for
statistics (allclose), the calibration scan and the fitted guardrail (identical) and question scores (identical)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import compute, lm_eval_results, setup
from safetensors.torch import load_file

from dsg_lens import distributed

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Each rank's (results, tensors) from ``torchrun --nproc-per-node 2 distributed_worker.py`` (gloo, CPU)."""
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DSG_TEST_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
               str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return [(json.loads((out / f"rank{r}.json").read_text()), load_file(str(out / f"rank{r}.safetensors")))
            for r in range(2)], out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same computation in this process, without a process group (the reference)."""
    if os.environ.get("DSG_TEST_DEVICE", "cpu") != "cpu":
        pytest.skip("the 2-process test runs on the CPU (gloo)")
    model, sae = setup(tmp_path_factory.mktemp("tok"))
    results, tensors, guard = compute(model, sae, tmp_path_factory.mktemp("ckpt"))
    results["lm_eval"] = lm_eval_results(model, guard, tmp_path_factory.mktemp("tasks"))
    return results, tensors


def test_every_rank_returns_what_one_process_returns(two_ranks, one_process):
    ranks, _ = two_ranks
    expected, expected_tensors = one_process
    for rank, (results, tensors) in enumerate(ranks):
        assert results["rank"] == rank
        for key in ("features", "tau", "n_tokens", "base_acc", "guarded_acc"):
            assert results[key] == expected[key], (rank, key)  # selected ids, tau, accuracies: identical
        # float sums and scores: equal up to the summation order of a different thread count / batch split
        for key in ("resid_norm", "scan_mean_resid_norm", "base", "guarded"):
            torch.testing.assert_close(torch.tensor(results[key]), torch.tensor(expected[key]), rtol=1e-5,
                                       atol=1e-5, msg=(rank, key))
        assert set(tensors) == set(expected_tensors)
        for name, value in expected_tensors.items():
            if name.startswith(("first_rank", "real", "full")):
                assert torch.equal(tensors[name], value), (rank, name)  # gathered, not recomputed
            else:
                torch.testing.assert_close(tensors[name], value, rtol=1e-6, atol=1e-6, msg=(rank, name))


def test_lm_eval_data_parallel_equals_one_process(two_ranks, one_process):
    """lm-eval's own data parallelism (each rank scores its share of the requests through DSGLM's all_gather /
    gather_object / barrier): rank 0 reports what one process reports."""
    pytest.importorskip("lm_eval", reason='lm-eval is an optional extra: pip install "dsg-lens[lm-eval]"')
    expected = one_process[0]["lm_eval"]
    (rank0, _), (rank1, _) = two_ranks[0]
    assert rank1["lm_eval"] is None  # lm-eval reports on rank 0 only
    assert rank0["lm_eval"]["acc"] == expected["acc"] and rank0["lm_eval"]["n"] == expected["n"] == 16
    for got, want in zip(rank0["lm_eval"]["lls"], expected["lls"]):
        assert got == pytest.approx(want, abs=1e-5)


def test_the_guardrail_edits_something_and_both_ranks_did_work(two_ranks, one_process):
    expected, _ = one_process
    assert expected["base"] != expected["guarded"]  # the comparison above is not between two no-ops
    ranks, out = two_ranks
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["rank0-of-2", "rank1-of-2"]  # statistics checkpoints are kept per rank
    done = [json.loads((out / "checkpoints" / name / "checkpoint.json").read_text())["batches_done"]
            for name in checkpoints]
    assert all(d > 0 for d in done)  # both ranks ran batches: the work was split


def test_outside_sharded_nothing_is_split():
    assert distributed.world() == (0, 1)
    assert all(distributed.owns(j) for j in range(5))
    assert distributed.merge_owned([1, None, 3]) == [1, None, 3]
    with distributed.sharded() as shard:  # no process group: still one process
        assert shard == (0, 1)
    assert distributed.in_batch_order([[0, 2, 4], [1, 3]], 5) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_torchrun_fit_command_equals_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m dsg_lens.cli fit` on the embedded model writes the guardrail one process
    writes (same latents, same tau)."""
    from dsg_lens.data import load_embedded_corpus

    for kind in ("forget", "retain"):
        rows = [json.dumps({"text": t}) for t in load_embedded_corpus(kind)[:24]]
        (tmp_path / f"{kind}.jsonl").write_text("\n".join(rows) + "\n")
    args = ["fit", "--forget-corpus", str(tmp_path / "forget.jsonl"), "--retain-corpus", str(tmp_path / "retain.jsonl"),
            "--calibration", "corpus", "--quiet", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "dsg_lens.cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "dsg_lens.cli", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-3000:]
    saved = [json.loads((tmp_path / name / "guardrail.json").read_text()) for name in ("one", "two")]
    assert saved[0]["latent_ids"] == saved[1]["latent_ids"]
    assert saved[0]["gate"] == saved[1]["gate"]  # tau included
    assert saved[0]["resid_norm"] == pytest.approx(saved[1]["resid_norm"], rel=1e-9)
