"""Warnings that point at the user's line: :func:`warn_user` attributes a warning to the first caller outside
dsg_lens and the runtime type-checking wrappers (jaxtyping, typeguard), however deep the library call was."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_INTERNAL = (str(Path(__file__).resolve().parent), "jaxtyping", "typeguard", "typecheck_tower")


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` with the stack level of the first frame outside dsg_lens."""
    frame, level = sys._getframe(1), 1
    while frame is not None and any(part in frame.f_code.co_filename for part in _INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
