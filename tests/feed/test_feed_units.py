"""The change feed's parts that need no PostgreSQL: its setting, its system check, its
part of ``relaycache stats``, the names it decodes, and its refusal of SQLite (a real
``manage.py`` process)."""

from __future__ import annotations

import json
import time
from io import StringIO
from typing import Any

import orjson
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from relaycache import InMemoryCache
from relaycache.orm import feed
from relaycache.orm.sqlwrites import written_tables
from relaycache.settings import feed_settings, read_settings
from tests.feed.support import SQLITE, manage


class CountingCache(InMemoryCache):
    """Counts :meth:`fetch` calls: the check must not read anything when it has no
    reason to."""

    def __init__(self) -> None:
        super().__init__(default_ttl=60)
        self.fetches = 0

    def fetch(self, keys: list[str]) -> list[Any]:
        self.fetches += 1
        return super().fetch(keys)


def record(backend: InMemoryCache, alias: str, **fields: Any) -> None:
    """Store a worker's progress record as a worker does."""
    backend.store_if_current(feed.progress_key(backend, alias), orjson.dumps(fields), [], [],
                             None)


def feed_messages(**config: Any) -> list[checks.CheckMessage]:
    with override_settings(RELAYCACHE=config):
        return [m for m in checks.run_checks(tags=[checks.Tags.caches])
                if m.id in ("relaycache.W004", "relaycache.E005")]


# -- statements and names ------------------------------------------------------------

@pytest.mark.parametrize("sql", feed.STATEMENTS)
def test_no_statement_of_the_feed_looks_like_a_write(sql: str) -> None:
    """The worker's own connection has the write hook: a statement it took for a write
    would invalidate the whole database on every poll."""
    assert written_tables(sql) == frozenset()


@pytest.mark.parametrize(("decoded", "parts"), [
    ("public.ormapp_book", ("public", "ormapp_book")),
    ('"My Schema"."T:b"', ("My Schema", "T:b")),
    ('"a""b"."x.y"', ('a"b', "x.y")),
    ('tenant_1."Note"', ("tenant_1", "Note")),
])
def test_decoded_table_names_are_split_and_unquoted(decoded: str, parts: tuple[str, str]
                                                    ) -> None:
    assert feed.split_name(decoded) == parts


def test_a_decoded_table_is_invalidated_under_its_own_name() -> None:
    assert feed.table_names(['public.ormapp_book', '"S"."No""te"']) == {
        "ormapp_book", 'No"te'}
    with pytest.raises(ValueError, match="schema-qualified"):
        feed.split_name("ormapp_book")


def test_wal_positions_order_as_numbers() -> None:
    assert feed.lsn_value("16/B374D848") == 0x16B374D848
    assert feed.lsn_text(feed.lsn_value("16/B374D848")) == "16/B374D848"
    assert feed.lsn_value("1/0") > feed.lsn_value("0/FFFFFFFF")


def test_slot_names_are_valid_replication_slot_names() -> None:
    assert feed.slot_name("default", "relaycache") == "relaycache_default"
    assert feed.slot_name("Replica-1", "rc") == "rc_replica_1"
    assert len(feed.slot_name("x" * 100, "relaycache")) == 63


# -- the setting -------------------------------------------------------------------------

def test_feed_setting_defaults() -> None:
    with override_settings(RELAYCACHE={}):
        assert feed_settings(read_settings()) == {
            "DATABASES": [], "MAX_LAG": 5.0, "SLOT_PREFIX": "relaycache"}
    with override_settings(RELAYCACHE={"FEED": {"DATABASES": ("default",), "MAX_LAG": 2}}):
        assert feed_settings(read_settings())["DATABASES"] == ["default"]


@pytest.mark.parametrize(("value", "error"), [
    ([], "must be a dict"),
    ({"DATABASE": ["default"]}, "unknown keys"),
    ({"DATABASES": "default"}, "list of database aliases"),
    ({"MAX_LAG": 0}, "positive number"),
    ({"MAX_LAG": True}, "positive number"),
    ({"SLOT_PREFIX": "Bad-Name"}, "replication slot name"),
])
def test_a_malformed_feed_setting_is_an_error_of_the_check(value: Any, error: str) -> None:
    with override_settings(RELAYCACHE={"FEED": value}), pytest.raises(
            ImproperlyConfigured, match=error):
        feed_settings(read_settings())
    [message] = feed_messages(FEED=value)
    assert message.id == "relaycache.E005" and error in message.msg


# -- the check ---------------------------------------------------------------------------

def test_the_check_reads_nothing_unless_the_feed_is_configured() -> None:
    backend = CountingCache()
    assert feed_messages(BACKEND=backend) == []
    assert feed_messages(BACKEND=backend, FEED={"MAX_LAG": 1.0}) == []
    assert backend.fetches == 0
    feed_messages(BACKEND=backend, FEED={"DATABASES": ["default"]})
    assert backend.fetches == (connection.vendor == "postgresql")


def test_the_check_names_aliases_that_do_not_exist() -> None:
    [message] = feed_messages(FEED={"DATABASES": ["nowhere"]})
    assert message.id == "relaycache.W004" and "'nowhere', which is not in DATABASES" in message.msg


def test_the_check_warns_about_the_default_database() -> None:
    """On SQLite: not supported. On PostgreSQL (the real-service leg), with a cache no
    worker ever wrote to: no worker has recorded progress."""
    [message] = feed_messages(FEED={"DATABASES": ["default"]})
    assert message.id == "relaycache.W004"
    if connection.vendor == "sqlite":
        assert "supports PostgreSQL only" in message.msg
    else:
        assert "No change-feed worker has recorded progress" in message.msg
        assert "relaycache listen --database default" in message.hint


# -- stats ------------------------------------------------------------------------------

def stats(**config: Any) -> tuple[dict[str, Any], str]:
    with override_settings(RELAYCACHE=config):
        out, text = StringIO(), StringIO()
        call_command("relaycache", "stats", "--json", stdout=out)
        call_command("relaycache", "stats", stdout=text)
    return json.loads(out.getvalue()), text.getvalue()


def test_stats_has_a_feed_part() -> None:
    data, text = stats()
    assert {"backend", "process", "storage", "feed"} <= set(data)
    assert data["feed"] == {"configured": False, "max_lag": 5.0,
                            "databases": {"default": None}}
    assert "Change feed: not configured" in text


def test_stats_shows_where_a_worker_stands() -> None:
    """The record as a worker writes it (see ``Feed.progress``), read back with its lag."""
    backend = InMemoryCache(default_ttl=60)
    record(backend, "default", slot="relaycache_default", lsn="0/16B3A28",
           caught_up_at=time.time() - 2, transactions=1234, worker="host:42",
           commit_lag={"p50": 0.052, "p99": 0.104, "max": 0.2, "samples": 1000})
    data, text = stats(BACKEND=backend, FEED={"DATABASES": ["default"], "MAX_LAG": 3})
    status = data["feed"]["databases"]["default"]
    assert data["feed"]["configured"] and 2 <= status["lag"] < 3
    assert status["lsn"] == "0/16B3A28" and status["commit_lag"]["p99"] == 0.104
    assert "default" in text and "caught up 2" in text and "slot relaycache_default" in text
    assert "p50 52 ms, p99 104 ms over the last 1,000 transactions (1,234 since" in text


def test_an_unreadable_record_counts_as_none() -> None:
    backend = InMemoryCache(default_ttl=60)
    backend.store_if_current(feed.progress_key(backend, "default"), b"\xff not json", [], [],
                             None)
    assert feed.read_progress(backend, ["default"]) == {"default": None}


# -- SQLite -------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [[], ["--setup"]], ids=["listen", "setup"])
def test_the_worker_refuses_sqlite(option: list[str]) -> None:
    done = manage({"DATABASES": {"default": SQLITE}, "RELAYCACHE": {}},
                  "relaycache", "listen", *option)
    assert done.returncode == 1, done
    assert "not supported on SQLite, which has no change stream" in done.stderr, done.stderr
