"""``cvt serve``: a batched HTTP inference server (FastAPI on uvicorn) and a web page, on the PyTorch front-end.

* :mod:`cvt.serve.app`: the ASGI app factory (:func:`create_app`), its routes and its limits;
* :mod:`cvt.serve.batcher`: dynamic batching (gather up to ``max_batch`` or ``max_wait``; one model thread);
* :mod:`cvt.serve.decode`: uploaded bytes -> 8-bit RGB PIL image, with the limits of :mod:`cvt.core.images`;
* :mod:`cvt.serve.metrics`: Prometheus series, one registry per app;
* :mod:`cvt.serve.settings`: :class:`ServeSettings`, the limits (importable without the extra);
* ``static/``: the page served at ``/`` (plain HTML, CSS and JavaScript; no build step, no CDN).

Needs the ``serve`` extra: ``pip install 'cvt-models[serve]'``.
"""

from __future__ import annotations

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:  # create_app imports FastAPI: only when asked for
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
