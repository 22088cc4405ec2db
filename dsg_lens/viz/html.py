"""circuitsvis components rendered as self-contained, offline HTML with safely escaped data.

circuitsvis's default HTML loads its JavaScript from a CDN and embeds its props as raw JSON inside a ``<script>``,
so a token such as ``"</script>"`` ends the script early. Here the bundled ``dist/cdn/iife.js`` of the installed
circuitsvis is inlined, and the props are JSON with ``<``, ``>``, ``&`` and U+2028/U+2029 written as ``\\uXXXX``
escapes (same JavaScript value, no HTML meaning). circuitsvis shows token strings through ``innerHTML`` (to render
spaces as ``&nbsp;``), so the ``tokens`` prop is HTML-escaped first: a token ``"<b>"`` shows as text, not markup
(hover tooltips, which React escapes itself, then show the entity). Headers are trusted HTML: build them with
:func:`html.escape` for any user text.
"""

from __future__ import annotations

import html
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import uuid4

import circuitsvis
import numpy as np
import torch
from circuitsvis.utils.render import RenderedHTML

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class OfflineHTML(RenderedHTML):
    """A rendered view that never touches the network: displays inline in notebooks (``_repr_html_``) and
    :meth:`save` writes a standalone HTML page."""

    def __init__(self, body: str, title: str = "dsg-lens"):
        super().__init__(local_src=body, cdn_src=body)
        self.title = title

    def _repr_html_(self) -> str:
        return self.local_src

    def __add__(self, other: OfflineHTML) -> OfflineHTML:
        return OfflineHTML(self.local_src + other.local_src, self.title)

    def page(self) -> str:
        """The full HTML document."""
        return (
            f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n</head>\n<body>\n{self.local_src}\n</body>\n</html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`page` to ``path`` (parent folders are created); returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.page(), encoding="utf-8")
        return out


@lru_cache(maxsize=1)
def _bundle() -> str:
    """circuitsvis's bundled browser script, with ``</script`` (inside its string literals) made inert."""
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise ValueError(f"circuitsvis {circuitsvis.__version__} has no bundled script at {path}; reinstall circuitsvis")
    return re.sub(r"</(script)", r"<\\/\1", path.read_text(encoding="utf-8"), flags=re.IGNORECASE)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def safe_json(props: dict[str, Any]) -> str:
    """JSON of ``props`` (tensors/arrays as lists, ``None`` dropped) that is inert inside an HTML ``<script>``."""
    data = {k: _plain(v) for k, v in props.items() if v is not None}
    try:
        text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    except ValueError as err:
        raise ValueError(f"cannot render NaN/inf values in a view ({err}); replace them first") from err
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)


def _escape_tokens(tokens: Any) -> Any:
    if isinstance(tokens, str):
        return html.escape(tokens, quote=False)
    return [_escape_tokens(t) for t in tokens]


def render_component(component: str, header: str = "", title: str = "dsg-lens", **props: Any) -> OfflineHTML:
    """Render circuitsvis React ``component`` (e.g. ``"ColoredTokens"``) with ``props`` (camelCase names, as the
    component expects) under an optional ``header`` (trusted HTML: escape user text with :func:`html.escape`)."""
    if "tokens" in props:
        props["tokens"] = _escape_tokens(props["tokens"])
    uid = f"dsg-lens-{uuid4().hex[:12]}"
    body = (
        f'{header}<div id="{uid}" style="margin: 15px 0;"></div>\n<script type="module">\n{_bundle()}\n'
        f'CircuitsVis.render("{uid}", CircuitsVis.{component}, {safe_json(props)});\n</script>\n'
    )
    return OfflineHTML(body, title)
