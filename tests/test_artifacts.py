"""Untrusted artifacts: guardrails, feature sets and statistics load only from safetensors + JSON, and tampered
files are refused with a clear error. The package never unpickles, evals or execs."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from conftest import make_sae, texts
from safetensors.torch import load_file, save_file

import dsg_lens as dsg

PACKAGE = Path(dsg.__file__).parent


@pytest.fixture(scope="module")
def saved(tiny_gpt2, tmp_path_factory):
    """A fitted guardrail (with FeatureSet) and latent stats saved to a fresh folder."""
    sae = make_sae()
    forget = dsg.collect_latent_stats(tiny_gpt2, sae, texts(1, 6, True), features=[1, 2], progress=False)
    retain = dsg.collect_latent_stats(tiny_gpt2, sae, texts(2, 6, False), progress=False)
    features = dsg.select_features(forget, retain, n=4, p_ratio=50)
    guard = dsg.DynamicSAEGuardrail.fit(tiny_gpt2, sae, features, texts(2, 6, False), clamp_scale=2.0, progress=False)
    root = tmp_path_factory.mktemp("saved")
    guard.save(root / "guard")
    forget.save(root / "stats")
    return root, sae


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


GUARD_TAMPERS = {
    "unknown schema version": (lambda d: _edit_json(d / "guardrail.json", lambda m: m.update(schema_version=99)),
                               "unsupported guardrail schema_version 99"),
    "missing schema version": (lambda d: _edit_json(d / "guardrail.json", lambda m: m.pop("schema_version")),
                               "unsupported guardrail schema_version None"),
    "NaN threshold": (lambda d: (d / "guardrail.json").write_text(
        (d / "guardrail.json").read_text().replace('"tau": ', '"tau": NaN, "x": ')), "non-finite number NaN"),
    "string threshold": (lambda d: _edit_json(d / "guardrail.json", lambda m: m["gate"].update(tau="0.5")),
                         "tau must be a finite number"),
    "unknown gate kind": (lambda d: _edit_json(d / "guardrail.json", lambda m: m["gate"].update(kind="oracle")),
                          "unknown gate kind 'oracle'"),
    "latent id out of range": (lambda d: _edit_json(d / "guardrail.json", lambda m: m["latent_ids"].__setitem__(0, 64)),
                               r"latent ids \[64\] are out of range"),
    "negative latent id": (lambda d: _edit_json(d / "guardrail.json", lambda m: m["latent_ids"].__setitem__(0, -1)),
                           "out of range"),
    "latent ids as floats": (lambda d: _edit_json(d / "guardrail.json", lambda m: m.update(latent_ids=[1.5])),
                             "latent_ids must be a non-empty list of ints"),
    "ids differ between json and safetensors": (
        lambda d: _edit_tensors(d / "guardrail.safetensors", lambda t: t.update(latent_ids=t["latent_ids"].flip(0))),
        "does not match"),
    "clamp_values wrong shape": (
        lambda d: _edit_tensors(d / "guardrail.safetensors", lambda t: t.update(clamp_values=torch.ones(9))),
        "clamp_values shape"),
    "clamp_values altered": (
        lambda d: _edit_tensors(d / "guardrail.safetensors", lambda t: t.update(clamp_values=t["clamp_values"] * 0)),
        "clamp_values differ"),
    "negative clamp": (lambda d: _edit_json(d / "guardrail.json", lambda m: m.update(clamp=-5.0)), "clamp=-5.0"),
    "clamp as string": (lambda d: _edit_json(d / "guardrail.json", lambda m: m.update(clamp="500")), "'clamp' must be"),
    "resid_norm removed": (lambda d: _edit_json(d / "guardrail.json", lambda m: m.update(resid_norm=None)),
                           "resid_norm"),
    "feature set ids swapped": (
        lambda d: _edit_tensors(d / "features.safetensors", lambda t: t.update(ids=t["ids"].flip(0))),
        "differ from guardrail.json"),
    "SAE fingerprint changed": (
        lambda d: _edit_json(d / "guardrail.json", lambda m: m["sae"].update(fingerprint="0" * 64)),
        "not the one the guardrail was fitted on"),
    "json is not json": (lambda d: (d / "guardrail.json").write_text("{not json"), "not valid JSON"),
    "json is a list": (lambda d: (d / "guardrail.json").write_text("[1, 2]"), "must hold a JSON object"),
    "safetensors truncated": (lambda d: (d / "guardrail.safetensors").write_bytes(
        (d / "guardrail.safetensors").read_bytes()[:40]), "not a readable safetensors file"),
    "safetensors missing": (lambda d: (d / "guardrail.safetensors").unlink(), "not found"),
    "tensor missing": (lambda d: _edit_tensors(d / "guardrail.safetensors", lambda t: t.pop("clamp_values")),
                       r"lacks tensors \['clamp_values'\]"),
    "feature set schema": (lambda d: _edit_json(d / "features.json", lambda m: m.update(schema_version=7)),
                           "unsupported feature set schema_version 7"),
    "feature set duplicate ids": (
        lambda d: _edit_tensors(d / "features.safetensors", lambda t: t.update(ids=torch.tensor([1, 1]))),
        "distinct"),
    "feature set float ids": (
        lambda d: _edit_tensors(d / "features.safetensors", lambda t: t.update(ids=t["ids"].float())),
        "int64"),
    "feature set short scores": (
        lambda d: _edit_tensors(d / "features.safetensors", lambda t: t.update({"score.ratio": torch.ones(2)})),
        "scores must be 1-D"),
}


@pytest.mark.parametrize("case", list(GUARD_TAMPERS))
def test_tampered_guardrail_is_refused(case, saved, tmp_path):
    root, sae = saved
    folder = _copy(root / "guard", tmp_path / "g")
    tamper, message = GUARD_TAMPERS[case]
    tamper(folder)
    with pytest.raises(ValueError, match=message):
        dsg.DynamicSAEGuardrail.load(folder, sae=sae)


def test_untampered_guardrail_loads(saved):
    root, sae = saved
    guard = dsg.DynamicSAEGuardrail.load(root / "guard", sae=sae)
    assert len(guard.latent_ids) == 4 and guard.clamp_scale == 2.0


STATS_TAMPERS = {
    "unknown schema version": (lambda d: _edit_json(d / "latent_stats.json", lambda m: m.update(schema_version=0)),
                               "unsupported latent stats schema_version 0"),
    "shapes differ": (lambda d: _edit_tensors(d / "latent_stats.safetensors",
                                              lambda t: t.update(act_sum=torch.ones(3))), "equal length"),
    "2-D sums": (lambda d: _edit_tensors(d / "latent_stats.safetensors", lambda t: t.update(
        {k: t[k][None] for k in ("act_sum", "act_sq_sum", "fire_count")})), "1-D"),
    "NaN sum": (lambda d: _edit_tensors(d / "latent_stats.safetensors",
                                        lambda t: t["act_sum"].__setitem__(0, float("nan"))), "NaN/inf"),
    "fire count above n_tokens": (lambda d: _edit_json(d / "latent_stats.json", lambda m: m.update(n_tokens=0)),
                                  "fire_count must lie in"),
    "rho feature out of range": (lambda d: _edit_json(d / "latent_stats.json",
                                                      lambda m: m.update(rho_features=[1, 64])), r"\[64\]"),
    "rho without tokens_per_text": (lambda d: _edit_tensors(d / "latent_stats.safetensors",
                                                            lambda t: t.pop("tokens_per_text")), "saved together"),
    "rho above 1": (lambda d: _edit_tensors(d / "latent_stats.safetensors", lambda t: t.update(rho=t["rho"] + 2)),
                    r"\[0, 1\]"),
    "n_tokens as string": (lambda d: _edit_json(d / "latent_stats.json", lambda m: m.update(n_tokens="12")),
                           "'n_tokens' must be"),
    "hook_name missing": (lambda d: _edit_json(d / "latent_stats.json", lambda m: m.pop("hook_name")),
                          "lacks the field 'hook_name'"),
    "Infinity in json": (lambda d: (d / "latent_stats.json").write_text(
        (d / "latent_stats.json").read_text().replace('"resid_norm_sum": ', '"resid_norm_sum": Infinity, "x": ')),
        "non-finite number Infinity"),
}


@pytest.mark.parametrize("case", list(STATS_TAMPERS))
def test_tampered_stats_are_refused(case, saved, tmp_path):
    root, _ = saved
    folder = _copy(root / "stats", tmp_path / "s")
    tamper, message = STATS_TAMPERS[case]
    tamper(folder)
    with pytest.raises(ValueError, match=message):
        dsg.LatentStats.load(folder)


class _Payload:
    """Unpickling this runs code: writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("target", ["guard/guardrail.safetensors", "guard/features.safetensors",
                                    "stats/latent_stats.safetensors"])
def test_a_pickle_in_place_of_safetensors_is_never_executed(target, saved, tmp_path):
    root, sae = saved
    marker = tmp_path / "marker"
    folder = _copy(root / target.split("/")[0], tmp_path / "copy")
    (folder / Path(target).name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        if target.startswith("stats"):
            dsg.LatentStats.load(folder)
        else:
            dsg.DynamicSAEGuardrail.load(folder, sae=sae)
    assert not marker.exists()


def test_saved_artifacts_are_only_json_and_safetensors(saved):
    root, _ = saved
    suffixes = {p.suffix for p in root.rglob("*") if p.is_file()}
    assert suffixes == {".json", ".safetensors"}


UNSAFE = {
    "pickle": re.compile(r"\b(?:import|from)\s+(?:c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b"
                         r"|\b(?:c?pickle|dill|cloudpickle|joblib|marshal)\.(?:loads?|Unpickler)\b"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "eval(": re.compile(r"(?<![\w.])eval\("),
    "exec(": re.compile(r"(?<![\w.])exec\("),
    "numpy allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load (unsafe loader)": re.compile(r"yaml\.load\("),
}


def test_package_never_unpickles_evals_or_execs():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {what}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for what, pattern in UNSAFE.items()
        if pattern.search(line)
    ]
    assert found == []


def test_unsafe_patterns_are_detected():
    """The grep above can fail: each pattern catches its target and spares the safe forms."""
    assert UNSAFE["torch.load without weights_only=True"].search("x = torch.load(path)")
    assert not UNSAFE["torch.load without weights_only=True"].search("x = torch.load(path, weights_only=True)")
    assert UNSAFE["eval("].search("eval(text)") and not UNSAFE["eval("].search("model.eval()")
    assert UNSAFE["exec("].search("exec(code)") and UNSAFE["pickle"].search("import pickle")
    assert UNSAFE["pickle"].search("obj = pickle.loads(data)") and UNSAFE["pickle"].search("from dill import load")
    assert not UNSAFE["pickle"].search("a file that is never a pickle")
