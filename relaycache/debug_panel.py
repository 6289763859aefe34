"""A django-debug-toolbar panel: this request's cached queries (rows, ``count()``,
``aggregate()``), hit or miss, and why a query was not cached.

    DEBUG_TOOLBAR_PANELS = [..., "relaycache.debug_panel.RelayCachePanel"]

Needs the ``debug-toolbar`` extra (``pip install "django-relaycache[debug-toolbar]"``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from debug_toolbar.panels import Panel

from .core import events

if TYPE_CHECKING:
    from django.http import HttpRequest
    from django.http.response import HttpResponseBase

    from .backends.base import BaseCache


class RelayCachePanel(Panel):
    title = "RelayCache"
    template = "relaycache/debug_panel.html"
    is_async = False  # events are matched to the request by thread

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._thread = threading.get_ident()
        self._events: list[dict[str, str]] = []

    @property
    def nav_subtitle(self) -> str:
        # django-debug-toolbar ships py.typed but leaves Panel's methods unannotated.
        stats = self.get_stats()  # type: ignore[no-untyped-call]
        return f"{stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses"

    def enable_instrumentation(self) -> None:
        self._thread = threading.get_ident()
        events.add_listener(self._record)

    def disable_instrumentation(self) -> None:
        events.remove_listener(self._record)

    def _record(self, event: str, backend: BaseCache, **data: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        if event == "query":
            # count() and aggregate() are keyed by the queryset's SQL and name themselves.
            operation = data.get("operation")
            sql = f"{operation}() of {data['sql']}" if operation else data["sql"]
            self._events.append({"kind": "hit" if data["hit"] else "miss", "sql": sql,
                                 "detail": ", ".join(data["tags"])})
        elif event == "uncacheable":
            self._events.append({"kind": "uncacheable", "sql": data["sql"],
                                 "detail": data["reason"]})
        elif event == "invalidated":
            self._events.append({"kind": "invalidated", "sql": "",
                                 "detail": ", ".join(data["tags"])})

    def generate_stats(self, request: HttpRequest, response: HttpResponseBase) -> None:
        kinds = [e["kind"] for e in self._events]
        # django-debug-toolbar ships py.typed but leaves Panel's methods unannotated.
        self.record_stats({  # type: ignore[no-untyped-call]
            "events": self._events,
            "hits": kinds.count("hit"),
            "misses": kinds.count("miss"),
            "uncacheable": kinds.count("uncacheable"),
            "invalidated": kinds.count("invalidated"),
        })
