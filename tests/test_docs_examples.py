"""Every fenced ``python`` block of README.md and docs/*.md runs here, one test each.

A block runs statement by statement in a fresh namespace, with a test database
(``django_db(transaction=True)``, so cached querysets really store and hit):

- **Placeholders.** ``...`` is Python: ``INSTALLED_APPS = [..., "relaycache"]`` and
  ``def f(slug): ...`` run as written.
- **Context a fragment assumes** is provided unless the block defines it (``docs_context``):
  ``models``, ``settings`` (Django's, whose ``CACHE_BACKEND`` is a RedisCache on the
  test Redis), the integration guide's models (``Book``, ``Genre``... of
  ``tests.ormapp``), ``slug``, ``REDIS_CLIENT``, ``redis``, ``RedisCache``,
  ``get_books_top`` and the two outside objects examples use, ``statsd`` and
  ``Money``.
- **Redis.** While the block runs, ``redis.Redis`` is a subclass that ignores the
  example's connection details (host, port, db, credentials, ``ssl*`` options) and
  connects to fakeredis, or to ``RELAYCACHE_TEST_REDIS_URL`` when set. ``redis://``
  URLs in settings are parsed and built into backends, never contacted; so are
  clients of servers an example names otherwise (``Sentinel(...).master_for(...)``).
- **Models.** A block that defines ``models.Model`` classes runs in an isolated app
  registry, in a module of the ``relaycache`` app (which has no models: tables are
  ``relaycache_<model>``); each model's table is created right after its class
  statement and dropped after the test.
- **Checks after each statement and at the end**, so that a block is executed, not
  just compiled: an expression statement giving a QuerySet is evaluated (``list()``);
  ``RELAYCACHE`` is applied with ``override_settings`` (the path Django's startup
  takes, so a bad key or value fails); ``INSTALLED_APPS`` must name ``relaycache``; a
  ``CACHE_BACKEND`` must be a backend, and store and hit if it is on the test Redis;
  every ``"relaycache...."`` dotted path must import; every ``@cache`` function the
  block defines is called twice with placeholder arguments and must hit the second
  time; every ``test_*`` function is called with its fixtures (the plugin's three as
  their context managers, others from pytest); a ``register_type`` must round-trip; a
  block using ``statsd`` from signal receivers must have them fire on a miss. What
  was checked is recorded in each test's ``user_properties`` (``--junitxml``).

A block that cannot run is preceded by ``<!-- not executed: reason -->``; it is still
compiled. Signal receivers, codec types and the default backend a block changes are
restored after it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import decimal
import importlib
import inspect
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection, models
from django.db.models.query import QuerySet
from django.test.utils import isolate_apps, override_settings
from django.utils.module_loading import import_string

from relaycache import CachedFunction, InMemoryCache, RedisCache, cache, signals
from relaycache.backends.base import BaseCache
from relaycache.core import codec
from relaycache.core.defaults import get_default_backend
from relaycache.testing import CacheCounter, cache_disabled, use_backend
from tests.ormapp import models as guide_models
from tests.support import redirected_redis

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*not executed:\s*(.*?)\s*-->\s*$", re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    source: str
    skip_reason: str | None  # the <!-- not executed: ... --> marker before it, if any

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_blocks(paths: list[Path]) -> list[Block]:
    blocks = []
    for path in paths:
        text = path.read_text()
        for match in _FENCE.finditer(text):
            before = text[:match.start()].rstrip("\n")
            last_line = before.rsplit("\n", 1)[-1]
            marker = _MARKER.search(last_line)
            blocks.append(Block(path, text.count("\n", 0, match.start()) + 1, match[1],
                                marker[1] if marker else None))
    return blocks


BLOCKS = doc_blocks(DOCS)


# -- the context fragments assume ----------------------------------------------------

class Statsd:
    """A stand-in metrics client (``statsd.incr(name)``)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def incr(self, name: str, count: int = 1) -> None:
        self.calls.append(name)


@dataclasses.dataclass(frozen=True)
class Money:
    amount: decimal.Decimal
    currency: str


@pytest.fixture
def docs_context(settings):
    """The implied names, and everything to undo after a block."""
    import fakeredis

    server = fakeredis.FakeServer()
    redis_class = redirected_redis("sync", server, REDIS_URL)
    prefix = f"docs{uuid.uuid4().hex[:8]}:"
    client = redis_class(decode_responses=True)  # an instance of the patched class too
    backend = RedisCache(client, default_ttl=60, value_prefix=prefix,
                         meta_prefix=prefix + "meta:")
    settings.CACHE_BACKEND = backend

    @cache(tags=lambda slug: [f"books_top:{slug}", "books"])
    def get_books_top(slug):
        return list(guide_models.Book.objects.filter(genres__genre__slug=slug, is_featured=True)
                    .order_by("title").values("id", "title"))

    implied = {
        "models": models,
        "settings": django_settings,
        "Book": guide_models.Book,
        "Genre": guide_models.Genre,
        "BookGenre": guide_models.BookGenre,
        "Publisher": guide_models.Publisher,
        "BookPublisher": guide_models.BookPublisher,
        "slug": "fantasy",
        "REDIS_CLIENT": client,
        "redis": redis,
        "RedisCache": RedisCache,
        "get_books_top": get_books_top,
        "statsd": Statsd(),
        "Money": Money,
    }
    saved_signals = {sig: list(sig.receivers) for sig in _relaycache_signals()}
    saved_types = (dict(codec._USER_TYPES), dict(codec._DECODERS))
    cleanups: list[Any] = []
    yield {"implied": implied, "redis_class": redis_class, "cleanups": cleanups}
    for cleanup in reversed(cleanups):
        cleanup()
    for sig, receivers in saved_signals.items():
        sig.receivers[:] = receivers
        sig.sender_receivers_cache.clear()
    codec._USER_TYPES.clear()
    codec._USER_TYPES.update(saved_types[0])
    codec._DECODERS.clear()
    codec._DECODERS.update(saved_types[1])
    backend.clear()
    client.close()


def _relaycache_signals() -> list[Any]:
    return [value for value in vars(signals).values()
            if type(value).__name__ == "Signal"]


# -- running a block -----------------------------------------------------------------

def _defines_models(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ClassDef) and any(
        isinstance(base, ast.Attribute) and base.attr == "Model" for base in node.bases)
        for node in tree.body)


def _create_table(model: type, cleanups: list[Any]) -> None:
    with connection.schema_editor() as editor:
        editor.create_model(model)

    def drop() -> None:
        with connection.schema_editor() as editor:
            editor.delete_model(model)

    cleanups.append(drop)


def _run_statements(block: Block, tree: ast.Module, ns: dict[str, Any],
                    cleanups: list[Any]) -> list[str]:
    filename = str(block.path)
    notes = []
    for node in tree.body:
        if isinstance(node, ast.Expr):
            code = compile(ast.Expression(node.value), filename, "eval")
            value = eval(code, ns)
            if isinstance(value, QuerySet):
                list(value)  # the query runs, through the cache if it is cached()
                notes.append(f"evaluated line {node.lineno}")
            continue
        exec(compile(ast.Module([node], type_ignores=[]), filename, "exec"), ns)
        if isinstance(node, ast.ClassDef):
            cls = ns.get(node.name)
            if (isinstance(cls, type) and issubclass(cls, models.Model)
                    and not cls._meta.abstract):
                _create_table(cls, cleanups)
                notes.append(f"table {cls._meta.db_table}")
    return notes


def _placeholder_args(func: CachedFunction) -> list[str]:
    params = func.signature.parameters.values()
    return [f"docs-{p.name}" for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                   p.POSITIONAL_OR_KEYWORD)]


PLUGIN_FIXTURES = {
    "relaycache_backend": lambda: use_backend(InMemoryCache()),
    "relaycache_disabled": cache_disabled,
    "relaycache_counter": CacheCounter,
}


def _call_test_function(func: Any, request: pytest.FixtureRequest) -> None:
    with contextlib.ExitStack() as stack:
        kwargs = {}
        for name in inspect.signature(func).parameters:
            if name in PLUGIN_FIXTURES:
                kwargs[name] = stack.enter_context(PLUGIN_FIXTURES[name]())
            else:
                kwargs[name] = request.getfixturevalue(name)
        func(**kwargs)


def _check_namespace(block: Block, ns: dict[str, Any], implied: dict[str, Any],
                     request: pytest.FixtureRequest) -> list[str]:
    """The checks that make a block's result count; returns what was checked."""
    checked = []
    defined = {name: value for name, value in ns.items()
               if not name.startswith("__") and value is not implied.get(name, object())}

    if "INSTALLED_APPS" in defined:
        assert "relaycache" in defined["INSTALLED_APPS"]
        checked.append("INSTALLED_APPS")

    for name, value in defined.items():
        for text in _strings(value) if name.isupper() else ():
            if re.fullmatch(r"relaycache(\.\w+)+", text):
                import_string(text)
                checked.append(f"import {text}")

    backend = defined.get("CACHE_BACKEND")
    if backend is not None:
        assert isinstance(backend, BaseCache)
        if not _on_test_redis(backend, implied):
            checked.append("CACHE_BACKEND built (its server is not contacted)")
    if backend is not None and _on_test_redis(backend, implied):
        calls = []

        @cache(backend=backend, tags=["docs-example"])
        def probe():
            calls.append(1)
            return {"ok": True}

        assert probe() == probe() == {"ok": True}
        assert calls == [1]
        backend.clear()
        checked.append("CACHE_BACKEND stores and hits")

    if "RELAYCACHE" in defined:
        with override_settings(RELAYCACHE=defined["RELAYCACHE"]):
            assert isinstance(get_default_backend(), BaseCache)
        checked.append("RELAYCACHE applied")

    for name, func in defined.items():
        if isinstance(func, CachedFunction):
            args = _placeholder_args(func)
            with CacheCounter() as counter:
                first = func(*args)
                assert func(*args) == first
            assert counter.hits >= 1, f"{name}{tuple(args)} was not served from the cache"
            checked.append(f"@cache {name}")

    for name, func in defined.items():
        if name.startswith("test_") and inspect.isfunction(func):
            _call_test_function(func, request)
            checked.append(f"ran {name}")

    if "register_type" in block.source and ns.get("Money") is Money:
        price = Money(decimal.Decimal("9.99"), "EUR")
        assert codec.decode(codec.encode({"price": price})) == {"price": price}
        checked.append("register_type round trip")

    if "statsd" in block.source and ns.get("statsd") is implied["statsd"]:
        @cache(tags=["docs-signals"])
        def missed():
            return 1

        missed()
        assert implied["statsd"].calls, "the example's receivers never fired"
        checked.append("receivers fired")
    return checked


def _on_test_redis(backend: BaseCache, implied: dict[str, Any]) -> bool:
    """Whether ``backend`` stores in the test's own Redis (or memory): a backend on a
    server the example names (a Sentinel deployment) is built, never contacted."""
    client = getattr(backend, "redis_client", None)
    return client is None or type(client) is type(implied["REDIS_CLIENT"])


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block(block, docs_context, monkeypatch, request):
    tree = ast.parse(block.source, filename=str(block.path))  # every block compiles
    if block.skip_reason is not None:
        assert len(block.skip_reason) >= 10, f"{block.id}: give the reason it is not executed"
        request.node.user_properties.append(("checks", f"not executed: {block.skip_reason}"))
        return

    implied = docs_context["implied"]
    ns: dict[str, Any] = {"__name__": "docs_example", **implied}
    cleanups = docs_context["cleanups"]
    with contextlib.ExitStack() as stack:
        if _defines_models(tree):
            # Django gives a model the label of the installed app its module is in;
            # relaycache has no models of its own, so "relaycache_<model>" tables are
            # free. The models go to an isolated registry, never the global one.
            ns["__name__"] = "relaycache.docs_example"
            stack.enter_context(isolate_apps("relaycache"))
        try:
            with monkeypatch.context() as patch:
                patch.setattr(redis, "Redis", docs_context["redis_class"])
                checked = _run_statements(block, tree, ns, cleanups)
            checked += _check_namespace(block, ns, implied, request)
        except Exception as exc:
            exc.add_note(f"in the python block at {block.id} (see tests/test_docs_examples.py "
                         "for the context blocks run in; a block that cannot run is "
                         "preceded by <!-- not executed: reason -->)")
            raise
    request.node.user_properties.append(("checks", "; ".join(checked) or "statements ran"))


def test_every_block_is_found():
    """The fence pattern sees every python block (a miscount would silently skip one)."""
    for path in DOCS:
        opened = len(re.findall(r"^```python", path.read_text(), re.M))
        assert opened == sum(1 for b in BLOCKS if b.path == path), path
    assert any(b.path.name == "README.md" for b in BLOCKS)


def test_blocks_and_markers_are_parsed(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```python\nx = 1\n```\n\n"
                    "<!-- not executed: needs a Redis Cluster -->\n```python\ny = 2\n```\n\n"
                    "```bash\nls\n```\n")
    first, second = doc_blocks([page])
    assert (first.line, first.source, first.skip_reason) == (3, "x = 1\n", None)
    assert (second.line, second.source, second.skip_reason) == (
        8, "y = 2\n", "needs a Redis Cluster")


def test_markers_are_rare():
    markers = [b for b in BLOCKS if b.skip_reason is not None]
    assert len(markers) <= max(3, len(BLOCKS) // 8), [b.id for b in markers]


def test_relaycache_names_in_blocks_exist():
    """``from relaycache... import X`` in any block (executed or not) names real things."""
    for block in BLOCKS:
        for node in ast.walk(ast.parse(block.source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "relaycache"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{block.id}: {node.module}.{alias.name}"
