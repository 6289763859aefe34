"""Caching Django views: ``cached_view`` and the ``HttpResponse`` codec type.

The codec knows ``HttpResponse`` (status, reason, content, headers, charset; never
cookies), so any ``@cache``-decorated function may return one, as the integration
guide's ``cache_view`` helper does: the app's ``ready()`` registers it, and without
the app in ``INSTALLED_APPS`` (the guide's settings) the codec does the first time it
meets a response or reads one back.

``cached_view`` caches what is safe to share between visitors:

- only ``GET`` (stored and served) and ``HEAD`` (served from the ``GET`` entry, never
  stored) requests of anonymous users, without an ``Authorization`` header;
- only ``200`` responses that set no cookie, are not streaming, are not
  ``Cache-Control: private/no-store/no-cache`` or ``Vary: *``, did not use the CSRF
  token and did not modify the session.

The key holds the view, scheme, host, path, the query string sorted by parameter, the
active language and time zone (as Django's ``cache_page``) and the values of the
request headers the response varies on. Those headers are only
known once a response exists, so each URL has a small *variant index* entry listing
them (the union of every ``Vary`` seen and ``vary_on_headers``): a lookup reads the
index, then the entry keyed by the request's values of those headers. An entry is
stored only under a header set that includes its own ``Vary``, so a request is served
a response only if it agrees on every header that response varies on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.template.response import SimpleTemplateResponse
from django.utils.timezone import get_current_timezone_name
from django.utils.translation import get_language

from .backends.base import BaseCache
from .core.codec import register_type
from .core.defaults import get_default_backend
from .core.keys import check_tags, check_ttl, digest

__all__ = ["cached_view"]

RESPONSE_TYPE_NAME = "django_http_response"

_UNCACHEABLE_DIRECTIVES = frozenset({"private", "no-store", "no-cache"})
_PATH_IN_KEY = 100  # characters of the path kept readable in keys (SCAN, inspect)

# Splits Vary and Cache-Control values (Django keeps its own copy private).
_HEADER_LIST_SEP = re.compile(r"\s*,\s*")

V = TypeVar("V", bound=Callable[..., Any])
TagsOf = Callable[..., Iterable[str] | None]
"""``tags(request, *args, **kwargs)``: the tags of one request's response."""


# -- HttpResponse in the codec -------------------------------------------------------

def _encode_response(response: HttpResponse) -> list[object]:
    if getattr(response, "is_rendered", True) is False:  # an unrendered TemplateResponse
        # Only a (Simple)TemplateResponse has is_rendered; tested by duck typing.
        cast(SimpleTemplateResponse, response).render()
    if response.cookies:
        raise TypeError(
            "relaycache cannot cache an HttpResponse that sets cookies: they belong to "
            "one visitor and would be replayed to every other one")
    return [response.status_code, response.reason_phrase, response.content,
            [[name, value] for name, value in response.headers.items()], response.charset]


def _decode_response(data: list[Any]) -> HttpResponse:  # data read back from the cache
    status, reason, content, headers, charset = data
    return HttpResponse(content, status=status, reason=reason, charset=charset,
                        headers=dict(headers))


def register_response_type() -> None:
    """Teach the codec ``HttpResponse``: called by the app's ``ready()``, or by the
    codec itself on its first response (``_DEFERRED_TYPES`` in ``core/codec.py``)."""
    register_type(HttpResponse, RESPONSE_TYPE_NAME, _encode_response, _decode_response)


# -- cached_view ---------------------------------------------------------------------

class _DontStore(Exception):
    """Raised out of the computation to hand a response back without storing it;
    ``index`` is the header set to record for the URL first, if any."""

    def __init__(self, response: object, index: list[str] | None = None) -> None:
        super().__init__()
        self.response = response
        self.index = index


def _header_names(value: str | None) -> set[str]:
    if not value:
        return set()
    return {name.strip().lower() for name in _HEADER_LIST_SEP.split(value) if name.strip()}


def _cache_control(response: HttpResponse) -> set[str]:
    return {directive.split("=", 1)[0].strip().lower()
            for directive in _HEADER_LIST_SEP.split(response.get("Cache-Control", ""))}


def _is_authenticated(user: object) -> bool:
    return user is not None and bool(getattr(user, "is_authenticated", False))


def _locale() -> list[str | None]:
    """The active language and time zone, as Django's ``cache_page`` keys them: the
    locale middleware activates them before the view but adds ``Vary`` after it."""
    language = get_language() if settings.USE_I18N else None
    zone = get_current_timezone_name() if settings.USE_TZ else None
    return [language, zone]


def _valid_index(value: object) -> list[str]:
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return value
    return []


class _Lookup:
    """One request's place in the cache: its tags, index key and variant keys."""

    __slots__ = ("backend", "base", "index_key", "path", "request", "tags")

    def __init__(self, backend: BaseCache, request: HttpRequest, base: list[object],
                 tags: list[str]) -> None:
        self.backend = backend
        self.request = request
        self.base = base
        self.tags = tags
        self.path = request.path[:_PATH_IN_KEY]
        self.index_key = f"view:idx:{self.path}:{digest(base)}"

    def entry_key(self, names: list[str]) -> str:
        headers = self.request.headers
        values = [[name, headers.get(name)] for name in names]
        return f"view:{self.path}:{digest([self.base, values])}"


class _CachedView:
    # ``view`` is a sync or an async view; its responses are passed through as they are.
    def __init__(self, view: Callable[..., Any], ttl: float | None, tags: list[str] | TagsOf,
                 backend: BaseCache | None, vary_on_headers: Iterable[str]) -> None:
        self.view = view
        self.ttl = ttl
        self.backend = backend
        self.tags = tags
        self.vary = frozenset(name.lower() for name in vary_on_headers)
        module = getattr(view, "__module__", None) or ""
        self.name = f"{module}.{getattr(view, '__qualname__', type(view).__qualname__)}"

    # -- deciding ---------------------------------------------------------------------

    def lookup(self, request: HttpRequest, user: object, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> _Lookup | None:
        """Where this request's response lives, or ``None`` if it must not be cached."""
        if request.method not in ("GET", "HEAD") or _is_authenticated(user):
            return None
        if "HTTP_AUTHORIZATION" in request.META and "authorization" not in self.vary:
            return None  # credentials the view may check itself (e.g. a token API)
        try:
            host = request.get_host()
        except DisallowedHost:
            return None
        tags = self.tags(request, *args, **kwargs) if callable(self.tags) else self.tags
        base: list[object] = [self.name, request.scheme, host, request.path,
                              sorted(request.GET.lists()), _locale()]
        return _Lookup(self.backend or get_default_backend(), request, base,
                       check_tags(tags or ()))

    def names(self, index: object) -> list[str]:
        """The request headers the key includes: declared ones and the index's."""
        return sorted(self.vary.union(_valid_index(index)))

    def storable(self, request: HttpRequest, response: object, names: list[str]
                 ) -> HttpResponse:
        """``response`` if it may be stored under ``names``; raises :class:`_DontStore`
        otherwise (with the header set the index must record, for new ``Vary``
        headers)."""
        if (getattr(response, "streaming", False) or not isinstance(response, HttpResponse)
                or response.status_code != 200 or response.cookies
                or _cache_control(response) & _UNCACHEABLE_DIRECTIVES
                or request.META.get("CSRF_COOKIE_NEEDS_UPDATE")
                or getattr(getattr(request, "session", None), "modified", False)):
            raise _DontStore(response)
        vary = _header_names(response.get("Vary"))
        if "*" in vary:
            raise _DontStore(response)
        if not vary <= set(names):
            # Stored under fewer headers than it varies on, it could be served to a
            # request that differs on one of them: record them, store next time.
            raise _DontStore(response, sorted(vary.union(names)))
        return response

    # -- sync views -------------------------------------------------------------------

    def __call__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        lookup = self.lookup(request, getattr(request, "user", None), args, kwargs)
        if lookup is None:
            return self.view(request, *args, **kwargs)
        backend = lookup.backend
        names = self.names(backend.get(lookup.index_key, tags=())[1])
        key = lookup.entry_key(names)
        if request.method == "HEAD":
            cached = backend.get(key, tags=lookup.tags)[1]
            return cached if isinstance(cached, HttpResponse) else self.view(
                request, *args, **kwargs)

        def compute() -> HttpResponse:
            response = self.view(request, *args, **kwargs)
            if getattr(response, "is_rendered", True) is False:
                response.render()  # inside the computation: lazy querysets run here
            return self.storable(request, response, names)

        try:
            response = backend.get_or_set(key, compute, ttl=self.ttl, tags=lookup.tags)
        except _DontStore as skipped:
            if skipped.index is not None:
                backend.set(lookup.index_key, skipped.index, self.ttl)
            return skipped.response
        return response if isinstance(response, HttpResponse) else self.view(
            request, *args, **kwargs)

    # -- async views ------------------------------------------------------------------

    async def acall(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        auser = getattr(request, "auser", None)
        user = await auser() if auser is not None else getattr(request, "user", None)
        lookup = self.lookup(request, user, args, kwargs)
        if lookup is None:
            return await self.view(request, *args, **kwargs)
        backend = lookup.backend
        names = self.names((await backend.aget(lookup.index_key, tags=()))[1])
        key = lookup.entry_key(names)
        if request.method == "HEAD":
            cached = (await backend.aget(key, tags=lookup.tags))[1]
            if isinstance(cached, HttpResponse):
                return cached
            return await self.view(request, *args, **kwargs)

        async def compute() -> HttpResponse:
            response = await self.view(request, *args, **kwargs)
            if getattr(response, "is_rendered", True) is False:
                await sync_to_async(response.render)()
            return self.storable(request, response, names)

        try:
            response = await backend.aget_or_set(key, compute, ttl=self.ttl, tags=lookup.tags)
        except _DontStore as skipped:
            if skipped.index is not None:
                await backend.aset(lookup.index_key, skipped.index, self.ttl)
            return skipped.response
        if isinstance(response, HttpResponse):
            return response
        return await self.view(request, *args, **kwargs)


@overload
def cached_view(ttl: V, /) -> V: ...


@overload
def cached_view(ttl: float | None = None, tags: Iterable[str] | TagsOf | None = None,
                backend: BaseCache | None = None,
                vary_on_headers: Iterable[str] = ()) -> Callable[[V], V]: ...


def cached_view(ttl: float | Callable[..., Any] | None = None,
                tags: Iterable[str] | TagsOf | None = None, backend: BaseCache | None = None,
                vary_on_headers: Iterable[str] = ()) -> Callable[..., Any]:
    """Cache a view's responses for anonymous ``GET``/``HEAD`` requests.

    :param ttl: seconds a response is kept (``None``: the backend's ``default_ttl``).
    :param tags: a list of tags, or ``callable(request, *args, **kwargs)`` returning
        one; :func:`relaycache.invalidate` on any of them drops the responses.
    :param backend: the backend (``None``: the default backend at request time).
    :param vary_on_headers: request headers the response depends on, in addition to
        those its ``Vary`` header names.

    Works on function views (sync or ``async def``) and, through
    ``django.utils.decorators.method_decorator``, on class-based views. ``@cached_view``
    without arguments works too.
    """
    if callable(ttl) and tags is None and backend is None and not vary_on_headers:
        return cached_view()(ttl)
    seconds = check_ttl(ttl)
    if backend is not None and not isinstance(backend, BaseCache):
        raise TypeError(f"backend must be a relaycache backend, got {backend!r}")
    if not callable(tags):
        tags = check_tags(tags or ())
    if isinstance(vary_on_headers, str):
        raise TypeError("vary_on_headers must be a list of header names, not a string")
    vary = tuple(vary_on_headers)
    if not all(isinstance(name, str) and name for name in vary):
        raise TypeError(f"vary_on_headers must hold header names, got {vary!r}")

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        cached = _CachedView(view, seconds, tags, backend, vary)
        if iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                return await cached.acall(request, *args, **kwargs)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return cached(request, *args, **kwargs)

        return wrapper

    return decorate
