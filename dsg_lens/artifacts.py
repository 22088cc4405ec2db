"""Safe reading and atomic writing of dsg-lens artifacts: JSON metadata + safetensors, nothing else.

Every reader raises ValueError naming the file and what is wrong (missing, unreadable, unknown schema version,
missing tensors), so a tampered or truncated artifact fails loudly instead of loading half-right. Writers go
through a temporary file and ``os.replace``, so an interrupted write never leaves a torn file behind.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (NaN/inf are refused: they are not JSON)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.replace(tmp, path)


def write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write ``tensors`` (moved to CPU, contiguous) as safetensors atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def read_json(path: Path, schema: int, what: str) -> dict[str, Any]:
    """The JSON object in ``path``, whose ``schema_version`` must be ``schema``."""
    if not path.is_file():
        raise ValueError(f"{path} not found: not a saved {what}")
    try:
        meta = json.loads(path.read_text(), parse_constant=_reject_constant)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity constants
        raise ValueError(f"{path} is not valid JSON ({err}): the {what} is corrupted or was tampered with") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("schema_version") != schema:
        raise ValueError(
            f"{path}: unsupported {what} schema_version {meta.get('schema_version')!r} (this dsg-lens reads {schema}); "
            "re-create it with this version"
        )
    return meta


def read_tensors(path: Path, required: Sequence[str], what: str) -> dict[str, Tensor]:
    """The tensors in safetensors file ``path`` (never a pickle), which must include ``required``."""
    if not path.is_file():
        raise ValueError(f"{path} not found: the {what} is incomplete")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}): the {what} is corrupted") from err
    missing = [k for k in required if k not in tensors]
    if missing:
        raise ValueError(f"{path} lacks tensors {missing}: the {what} is incomplete or was tampered with")
    return tensors


def require(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    """``meta[key]``, which must exist and be of ``kind`` (bool is never accepted as a number)."""
    if key not in meta:
        raise ValueError(f"{path} lacks the field {key!r}")
    value = meta[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ValueError(f"{path}: field {key!r} must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: field {key!r} must be finite, got {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name}")
