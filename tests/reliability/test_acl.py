"""RedisCache under a Redis user limited to the commands it needs.

The ACL rules are read from docs/redis.md (the lines ``ACL SETUSER relaycache ...``),
so the documentation cannot drift from what is tested. The tests check that (1) a
full workflow (misses, hits, invalidation, delete, clear, distributed singleflight
across two clients, the near cache with its heartbeat, the async path, the restart
check) sends no other command, (2) it
works under the documented user, with nothing denied, and (3) each documented command
is needed: without it something is denied.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from relaycache import CircuitBreaker, RedisCache, cache, invalidate
from tests.servers import HOST, command_stats
from tests.support import run_concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis

PREFIX, META = "rc:", "rc:meta:"  # the prefixes the documented rules name
DOC = Path(__file__).resolve().parents[2] / "docs" / "redis.md"


def _documented_rules() -> tuple[str, str]:
    """The ACL line for plain/Sentinel servers, then the one for Cluster."""
    lines = [line.strip() for line in DOC.read_text().splitlines()
             if line.startswith("ACL SETUSER relaycache ")]
    assert len(lines) == 2, f"expected two ACL lines in {DOC}, found {lines}"
    return lines[0], lines[1]


SERVER_RULE, CLUSTER_RULE = _documented_rules()


def _commands(rule: str) -> list[str]:
    return [word[1:] for word in rule.split() if word.startswith("+")]


COMMANDS, CLUSTER_COMMANDS = _commands(SERVER_RULE), _commands(CLUSTER_RULE)
# Sent by redis-py at connection time and always allowed (HELLO 3 AUTH ...), or sent
# by this test itself.
_NOT_OURS = ("hello", "auth", "acl", "config", "client|setinfo", "client|list",
             "cluster|info", "cluster|nodes", "cluster|myid", "dbsize", "keys")


def acl_rule(rule: str, without: str | None = None) -> list[str]:
    """The arguments of ``ACL SETUSER`` after the user name, with a real password."""
    words = rule.split()[3:]
    assert words[0] == "on" and ">PASSWORD" in words and f"~{PREFIX}*" in words, rule
    return [">s3cret" if w == ">PASSWORD" else w for w in words if w != f"+{without}"]


def _workflow(make_client) -> dict:
    """Everything RelayCache does, from two "processes" (two clients and backends)."""
    backends = [RedisCache(make_client(), default_ttl=60, value_prefix=PREFIX,
                           meta_prefix=META, lease_ttl=0.5,
                           breaker=CircuitBreaker(threshold=3, cooldown=0.2))
                for _ in range(2)]
    truth, computed = {"v": 1}, []

    def compute(n):
        computed.append(n)
        time.sleep(0.15)
        return {"n": n, "v": truth["v"]}

    fns = [cache(backend=b, tags=lambda n: [f"book:{n}", "books"], key=lambda n: f"book:{n}",
                 distributed_singleflight=True)(compute) for b in backends]
    both = run_concurrently(lambda i: fns[i](1), len(fns), timeout=15,
                            return_exceptions=True)
    raised = [got for got in both if isinstance(got, BaseException)]
    results = [got for got in both if not isinstance(got, BaseException)]
    out: dict = {"singleflight_computed": len(computed)}
    out["hits"] = [fns[0](1), fns[1](1)]
    truth["v"] = 2
    invalidate(["books"], backend=backends[1])
    out["after_invalidate"] = fns[0](1)
    backends[0].set("plain", [1, 2], tags=["books"])
    out["get"] = backends[1].get("plain", tags=["books"])
    backends[0].delete("plain")
    out["after_delete"] = backends[1].get("plain", tags=["books"])

    # The near cache (on by default): served from the process for longer than a
    # quarter of its heartbeat, so that its tracking connection also sends a PING.
    backends[0].set("near", 1, tags=["books"])
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        backends[0].get("near", tags=["books"])
        time.sleep(0.005)
    out["near_hits"] = backends[0].stats.near_hits

    async def async_path():
        value = await backends[0].aget_or_set("async", lambda: asyncio.sleep(0, "a"),
                                              tags=["books"], singleflight=True)
        await backends[0].ainvalidate(["books"])
        again = await backends[0].aget_or_set("async", lambda: asyncio.sleep(0, "b"),
                                              tags=["books"])
        return [value, again]

    out["async"] = asyncio.run(async_path())
    try:
        backends[0].clear()
        out["clear"] = "ok"
    except redis.RedisError as exc:
        out["clear"] = repr(exc)
    out["errors"] = sum(b.stats.errors for b in backends)
    out["raised"] = raised
    out["results"] = results
    out["backends"] = backends
    return out


def _assert_worked(out: dict) -> None:
    assert out["raised"] == [] and out["results"] == [{"n": 1, "v": 1}] * 2, out
    assert out["singleflight_computed"] == 1, out
    assert out["hits"] == [{"n": 1, "v": 1}] * 2
    assert out["after_invalidate"] == {"n": 1, "v": 2}
    assert out["get"] == (True, [1, 2]) and out["after_delete"] == (False, None)
    assert out["async"] == ["a", "b"] and out["clear"] == "ok"
    assert out["errors"] == 0, out
    assert out["near_hits"] > 10, out


@pytest.fixture
def server_clients(redis_server):
    admin = redis_server.client()
    made = []

    def make_client(user: str | None = None, db: int = 3):
        options = {"username": user, "password": "s3cret"} if user else {}
        made.append(redis.Redis(host=HOST, port=redis_server.port, db=db, **options))
        return made[-1]

    yield admin, make_client
    for client in made:
        client.close()


def test_the_documented_commands_are_all_relaycache_sends(server_clients):
    admin, make_client = server_clients
    admin.config_resetstat()
    out = _workflow(make_client)
    _assert_worked(out)
    used = {c for c in command_stats(admin) if not c.startswith(_NOT_OURS)}
    print(f"\ncommands sent by RelayCache: {sorted(used)}")
    assert used <= set(COMMANDS), f"not in docs/redis.md: {sorted(used - set(COMMANDS))}"
    assert used == set(COMMANDS), f"listed but never sent: {sorted(set(COMMANDS) - used)}"


def test_a_user_limited_to_the_documented_commands_can_do_everything(server_clients):
    admin, make_client = server_clients
    admin.execute_command("ACL", "SETUSER", "relaycache", *acl_rule(SERVER_RULE))
    admin.execute_command("ACL", "LOG", "RESET")
    out = _workflow(lambda: make_client("relaycache"))
    denied = admin.acl_log()
    assert denied == [], [(e["object"], e["reason"]) for e in denied]
    _assert_worked(out)
    # The user is limited to RelayCache's keys.
    with pytest.raises(redis.exceptions.NoPermissionError):
        make_client("relaycache").get("someone-else:key")


def test_each_documented_command_is_needed(server_clients):
    admin, make_client = server_clients
    missing = {}
    for command in COMMANDS:
        admin.execute_command("ACL", "SETUSER", "relaycache",
                              *acl_rule(SERVER_RULE, without=command))
        admin.execute_command("ACL", "LOG", "RESET")
        admin.script_flush()  # else EVALSHA finds the scripts of the previous run
        began = time.monotonic()
        out = _workflow(lambda: make_client("relaycache"))
        denied = {e["object"] for e in admin.acl_log()}
        missing[command] = (sorted(denied), out["errors"], round(time.monotonic() - began, 1))
        assert command in denied, f"{command} was never needed: {out}"
        assert out["raised"] == [], f"without {command}: exceptions {out['raised']}"
        # Give the user its rights back: invalidations refused meanwhile land, and no
        # retry thread outlives this iteration.
        admin.execute_command("ACL", "SETUSER", "relaycache", *acl_rule(SERVER_RULE))
        assert wait_until(lambda o=out: all(not b.pending_invalidations
                                            for b in o["backends"]), 10, 0.05)
        admin.delete(*admin.keys(f"{PREFIX}*") or ["-"])
    print(f"\ndenied commands, stats.errors and seconds, one command removed at a time: "
          f"{missing}")


@pytest.mark.cluster
def test_a_cluster_user_limited_to_the_documented_commands(shared_redis_cluster):
    redis_cluster = shared_redis_cluster
    nodes = redis_cluster.node_clients()
    for node in nodes:
        node.config_resetstat()
    made = []

    def make_client(user: str | None = None):
        options = {"username": user, "password": "s3cret"} if user else {}
        made.append(RedisCluster(host=HOST, port=redis_cluster.ports[0], **options))
        return made[-1]

    try:
        _assert_worked(_workflow(make_client))
        used = set()
        for node in nodes:
            used |= {c for c in command_stats(node) if not c.startswith(_NOT_OURS)}
        print(f"\ncommands sent by RelayCache on a cluster: {sorted(used)}")
        assert used == set(CLUSTER_COMMANDS), (sorted(used - set(CLUSTER_COMMANDS)),
                                               sorted(set(CLUSTER_COMMANDS) - used))

        for node in nodes:
            node.execute_command("ACL", "SETUSER", "relaycache", *acl_rule(CLUSTER_RULE))
            node.execute_command("ACL", "LOG", "RESET")
        out = _workflow(lambda: make_client("relaycache"))
        denied = [(e["object"], e["reason"]) for node in nodes for e in node.acl_log()]
        assert denied == []
        _assert_worked(out)
    finally:
        for client in made:
            client.close()
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "relaycache")
            node.close()
