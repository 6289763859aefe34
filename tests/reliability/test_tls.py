"""RedisCache over TLS (docs/redis.md): a ``rediss://`` URL with the CA in its query
string, and a client built with ``ssl_*`` options and a client certificate (mutual
TLS). Certificates are made for the test with ``openssl``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from relaycache import RedisCache, cache, invalidate
from tests.reliability.support import prefix
from tests.servers import HOST, free_port

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis

MISS = object()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    # Extensions as Python 3.13's strict verification (VERIFY_X509_STRICT) wants them.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=relaycache-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out",
                 f"{name}.crt", cwd=d)
    return d


@pytest.fixture
def tls_server(redis_server_factory, certificates):
    """TLS on its own port, client certificates required. (The plain port stays open
    on loopback only for the fixture's readiness probe.)"""
    port = free_port()
    redis_server_factory(extra_args=(
        "--tls-port", str(port),
        "--tls-cert-file", str(certificates / "server.crt"),
        "--tls-key-file", str(certificates / "server.key"),
        "--tls-ca-cert-file", str(certificates / "ca.crt"),
        "--tls-auth-clients", "yes"))
    return port


def _exercise(backend: RedisCache, *, asynchronous: bool = True) -> None:
    truth = {"v": 1}

    @cache(backend=backend, tags=["books"], key=lambda: "book")
    def book():
        return dict(truth)

    assert book() == {"v": 1} and book() == {"v": 1} and backend.stats.hits == 1
    truth["v"] = 2
    invalidate(["books"], backend=backend)
    assert book() == {"v": 2}
    assert backend.stats.errors == 0
    if asynchronous:
        _exercise_async(backend)


def _exercise_async(backend: RedisCache) -> None:
    async def async_path():
        first = await backend.aget_or_set("a", lambda: asyncio.sleep(0, "x"), tags=["books"])
        return first, await backend.aget_or_set("a", lambda: asyncio.sleep(0, "y"),
                                                tags=["books"])

    assert asyncio.run(async_path()) == ("x", "x")
    assert backend.stats.errors == 0


def _query(certificates: Path, *names: str) -> str:
    files = {"ssl_ca_certs": "ca.crt", "ssl_certfile": "client.crt", "ssl_keyfile": "client.key"}
    return "&".join(f"{n}={quote(str(certificates / files[n]))}" for n in names)


def test_rediss_url_with_certificates_in_the_query_string(tls_server, certificates):
    port = tls_server
    value_prefix = prefix("tls")
    url = (f"rediss://{HOST}:{port}/0?ssl_cert_reqs=required&"
           + _query(certificates, "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"))
    backend = RedisCache.from_url(url, 60, value_prefix=value_prefix,
                                  meta_prefix=value_prefix + "meta:")
    _exercise(backend)
    # The restart check works over TLS: the server's run_id is recorded.
    assert backend._client.get(value_prefix + "meta:server")
    # A client that does not trust the CA, or has no certificate, cannot connect:
    # the cache falls through to computing.
    for query in (_query(certificates, "ssl_certfile", "ssl_keyfile"),
                  _query(certificates, "ssl_ca_certs")):
        refused = RedisCache.from_url(
            f"rediss://{HOST}:{port}/0?ssl_cert_reqs=required&{query}", 60,
            value_prefix=value_prefix, meta_prefix=value_prefix + "meta:")
        assert refused.get_or_set("k", lambda: "computed", tags=["t"]) == "computed"
        assert refused.stats.errors >= 1 and refused.stats.hits == 0
    backend.clear()


def _ssl_client(port: int, certificates: Path) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, ssl=True,
                       ssl_ca_certs=str(certificates / "ca.crt"),
                       ssl_certfile=str(certificates / "client.crt"),
                       ssl_keyfile=str(certificates / "client.key"),
                       ssl_cert_reqs="required", ssl_check_hostname=True)


def test_ssl_options_with_a_client_certificate(tls_server, certificates):
    port = tls_server
    value_prefix = prefix("mtls")
    backend = RedisCache(_ssl_client(port, certificates), 60, value_prefix=value_prefix,
                         meta_prefix=value_prefix + "meta:")
    _exercise(backend, asynchronous=False)
    backend.clear()


def test_async_calls_on_a_client_built_with_ssl_options(tls_server, certificates):
    """``aget_or_set`` derives an asyncio client from the given one; a client made with
    ``redis.Redis(ssl=True, ...)`` carries ``ssl_*`` arguments (OCSP ones) that the
    asyncio connection class does not take."""
    port = tls_server
    value_prefix = prefix("amtls")
    backend = RedisCache(_ssl_client(port, certificates), 60, value_prefix=value_prefix,
                         meta_prefix=value_prefix + "meta:")
    _exercise_async(backend)
    backend.clear()
