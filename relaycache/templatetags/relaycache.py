"""``{% cached %}``: a template fragment cached under tags and invalidated by writes.

    {% load relaycache %}
    {% cached 600 "sidebar" request.LANGUAGE_CODE models="shop.Book shop.Genre" tags="home" %}
        ... expensive fragment ...
    {% endcached %}

Like Django's ``{% cache %}``: a ttl (seconds, or ``None`` for the backend's default)
and a fragment name, then any variables the fragment varies on. ``models=`` names the
models whose writes must drop it (their tables' tags, through the alias each is read
from, so every ``save()``, ``update()``... invalidates it as it does a cached
queryset); ``tags=`` adds your own tags for :func:`relaycache.invalidate`; each takes a
string of names separated by spaces or commas, or a list. ``backend=`` picks a backend
(default: the default backend). The stamps are taken before the fragment renders, so
a write during the render never leaves an old fragment in the cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from django import template
from django.template.base import FilterExpression, Parser, Token

from ..backends.base import BaseCache
from ..core.defaults import get_default_backend
from ..core.keys import check_tags, check_ttl, digest
from ..orm.targets import models_tags

register = template.Library()

_NAMES = re.compile(r"[\s,]+")
_OPTIONS = ("models", "tags", "backend")


def _names(value: Any, what: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [name for name in _NAMES.split(value) if name]
    if isinstance(value, Iterable):
        return [str(name) for name in value]
    raise template.TemplateSyntaxError(f"{{% cached %}} {what}= takes names, got {value!r}")


class CachedNode(template.Node):
    def __init__(self, nodelist: template.NodeList, ttl: FilterExpression,
                 name: str, vary: list[FilterExpression],
                 options: dict[str, FilterExpression]) -> None:
        self.nodelist = nodelist
        self.ttl = ttl
        self.name = name
        self.vary = vary
        self.options = options

    def _option(self, name: str, context: template.Context) -> Any:
        expression = self.options.get(name)
        return None if expression is None else expression.resolve(context)

    def render(self, context: template.Context) -> str:
        ttl = self.ttl.resolve(context)
        try:
            ttl = check_ttl(None if ttl in (None, "None") else float(ttl))
        except (TypeError, ValueError) as exc:
            raise template.TemplateSyntaxError(
                f"{{% cached %}} ttl must be positive seconds or None, got {ttl!r}") from exc
        backend = self._option("backend", context) or get_default_backend()
        if not isinstance(backend, BaseCache):
            raise template.TemplateSyntaxError(
                f"{{% cached %}} backend= must be a relaycache backend, got {backend!r}")
        try:
            tags = check_tags([*models_tags(_names(self._option("models", context), "models")),
                               *_names(self._option("tags", context), "tags")])
        except (LookupError, TypeError, ValueError) as exc:
            raise template.TemplateSyntaxError(f"{{% cached %}}: {exc}") from exc
        vary = [str(expression.resolve(context)) for expression in self.vary]
        key = f"tpl:{self.name[:100]}:{digest([self.name, vary])}"
        # The codec keeps exact types and has no SafeString: store the text as a plain
        # str (a node's output is never escaped again anyway).
        return str(backend.get_or_set(key, lambda: str.__str__(self.nodelist.render(context)),
                                      ttl=ttl, tags=tags))


@register.tag("cached")
def do_cached(parser: Parser, token: Token) -> CachedNode:
    """``{% cached ttl name [vary ...] [models=...] [tags=...] [backend=...] %}``."""
    bits = token.split_contents()
    if len(bits) < 3:
        raise template.TemplateSyntaxError(
            "{% cached %} takes a ttl and a fragment name: {% cached 600 \"name\" %}")
    nodelist = parser.parse(("endcached",))
    parser.delete_first_token()
    options: dict[str, FilterExpression] = {}
    vary: list[FilterExpression] = []
    for bit in bits[3:]:
        option, sep, value = bit.partition("=")
        if sep and option in _OPTIONS:
            options[option] = parser.compile_filter(value)
        elif sep and option.isidentifier():
            raise template.TemplateSyntaxError(
                f"{{% cached %}} has no option {option!r}; options: {', '.join(_OPTIONS)}")
        else:
            vary.append(parser.compile_filter(bit))
    name = bits[2].strip("\"'")
    return CachedNode(nodelist, parser.compile_filter(bits[1]), name, vary, options)
