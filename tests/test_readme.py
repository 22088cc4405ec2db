"""The README's python blocks: the quickstart runs as written (self-contained: the embedded model, SAE and corpora),
and every block compiles and uses only names it imports or defines, or that a block before it defines."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[tuple[str, str]]:
    """(section heading, code) of every ```python block of the README, in order."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        heading = re.findall(r"^#+ (.+)$", text[: match.start()], re.M)[-1]
        blocks.append((heading, match.group(1)))
    return blocks


def _names(code: str) -> tuple[set[str], set[str]]:
    """(names the code binds, names it reads) — module level and nested scopes alike."""
    bound, read = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound, read


def test_the_readme_has_a_quickstart_block():
    headings = [heading for heading, _ in python_blocks()]
    assert headings[0] == "Quickstart" and len(headings) >= 5


def test_every_block_uses_only_names_defined_before():
    known = set(dir(builtins))
    for heading, code in python_blocks():
        bound, read = _names(code)
        missing = sorted(read - bound - known)
        assert not missing, f"README block under '{heading}' uses undefined names {missing}"
        known |= bound


def test_quickstart_runs_as_written(tmp_path, monkeypatch):
    import dsg_lens as dsg

    heading, code = python_blocks()[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"README.md ({heading})", "exec"), namespace)  # noqa: S102 - the README's own code
    guard = namespace["guard"]
    assert isinstance(guard, dsg.DynamicSAEGuardrail) and len(guard.latent_ids) == 20
    assert (tmp_path / "animal_guard" / "guardrail.json").is_file()
    assert namespace["logits"].shape[:2] == namespace["tokens"].shape
    assert dsg.attached_hooks(namespace["model"]) == []  # the with-block removed the guardrail
