"""The integration guide's own ``cache_view`` helper, verbatim, on every backend.

It caches the ``HttpResponse`` a view returns with ``@cache(backend=settings.CACHE_BACKEND)``;
that works because ``relaycache.http`` (imported by the app) registers ``HttpResponse``
with the codec. Also the codec round trip of responses itself.
"""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.http import (
    HttpResponse,
    HttpResponseNotFound,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)

from relaycache import invalidate
from relaycache.core.codec import decode, encode
from tests.django.guide_cache_utils import cache_view
from tests.django.views import CALLS

pytestmark = pytest.mark.urls("tests.django.urls")


@pytest.fixture
def guide_backend(backend, settings):
    """``settings.CACHE_BACKEND`` as the guide's settings.py defines it."""
    settings.CACHE_BACKEND = backend
    return backend


def test_guide_usage_example(client, guide_backend):
    first = client.get("/guide/books/fantasy/")
    second = client.get("/guide/books/fantasy/")
    assert CALLS["guide"] == 1
    assert second.status_code == first.status_code == 200
    assert second.content == first.content == b"guide call=1 query= fantasy"
    assert second["Content-Type"] == first["Content-Type"]
    assert guide_backend.get("book_list:fantasy", tags=["book_page:fantasy", "book_pages"])[0]


def test_guide_tags_invalidate(client, guide_backend):
    client.get("/guide/books/fantasy/")
    client.get("/guide/books/poetry/")
    invalidate(tags=["book_page:fantasy"], backend=django_settings.CACHE_BACKEND)
    assert client.get("/guide/books/fantasy/").content == b"guide call=3 query= fantasy"
    assert client.get("/guide/books/poetry/").content == b"guide call=2 query= poetry"
    invalidate(tags=["book_pages"], backend=django_settings.CACHE_BACKEND)
    client.get("/guide/books/fantasy/")
    client.get("/guide/books/poetry/")
    assert CALLS["guide"] == 5


def test_guide_default_key_follows_the_query(client, guide_backend):
    def get(query):
        return client.get(f"/guide/default-key/?{query}").json()["body"]

    assert get("a=1") == "guide_default call=1 query=a=1"
    assert get("a=1") == "guide_default call=1 query=a=1"
    assert get("a=2") == "guide_default call=2 query=a=2"
    response = client.get("/guide/default-key/?a=2")
    assert response["Content-Type"] == "application/json"


def test_guide_helper_only_uses_the_backend_in_settings(client, guide_backend,
                                                        relaycache_backend):
    client.get("/guide/books/fantasy/")
    client.get("/guide/books/fantasy/")
    assert guide_backend.stats.hits == 1
    assert relaycache_backend.stats.snapshot()["hits"] == 0


@pytest.mark.usefixtures("templates")
def test_guide_helper_renders_template_responses(client, guide_backend):
    assert client.get("/guide/template/").content == b"template calls=1"
    assert client.get("/guide/template/").content == b"template calls=1"
    assert CALLS["guide_template"] == 1


def test_guide_helper_refuses_responses_with_cookies(client, guide_backend):
    for _ in range(2):
        with pytest.raises(TypeError, match="sets cookies"):
            client.get("/guide/cookie/")
    assert CALLS["guide_cookie"] == 2  # nothing was stored


def test_guide_helper_refuses_streaming_responses(client, guide_backend):
    with pytest.raises(TypeError, match="StreamingHttpResponse"):
        client.get("/guide/streaming/")


def test_guide_helper_on_a_view_of_your_own(rf, guide_backend):
    """The guide's decorator applied in a test, as a project would in its views."""
    @cache_view(ttl=30, tags=["mine"], key_func=lambda request: "mine")
    def mine(request):
        CALLS["mine"] += 1
        return HttpResponseNotFound("gone")

    assert mine(rf.get("/x/")).status_code == 404
    assert mine(rf.get("/y/")).status_code == 404  # the guide caches any status
    assert CALLS["mine"] == 1


# -- the codec round trip of responses -----------------------------------------------

@pytest.mark.parametrize("response", [
    HttpResponse(b"\x00\xffbinary", content_type="application/octet-stream"),
    HttpResponse("héllo wörld", charset="latin-1", content_type="text/plain; charset=latin-1"),
    HttpResponse("teapot", status=418, reason="Short and stout"),
    HttpResponse("", status=204),
    HttpResponseNotFound("missing"),
    HttpResponseRedirect("/next/?a=1"),
    JsonResponse({"a": [1, 2], "b": None}),
    HttpResponse("h", headers={"X-Many": "a, b", "Cache-Control": "max-age=60",
                               "Content-Language": "fr"}),
], ids=["binary", "latin-1", "reason", "empty", "404", "redirect", "json", "headers"])
def test_response_round_trip(response):
    back = decode(encode(response))
    assert type(back) is HttpResponse
    assert back.status_code == response.status_code
    assert back.reason_phrase == response.reason_phrase
    assert back.content == response.content
    assert back.charset == response.charset
    assert dict(back.headers) == dict(response.headers)
    assert not back.cookies


def test_response_inside_other_data_round_trips():
    value = {"page": HttpResponse("x", status=201), "n": 1}
    back = decode(encode(value))
    assert back["n"] == 1 and back["page"].status_code == 201 and back["page"].content == b"x"


def test_response_with_cookies_is_a_clear_error():
    response = HttpResponse("x")
    response.set_cookie("session", "secret")
    with pytest.raises(TypeError, match="sets cookies"):
        encode(response)


def test_streaming_response_is_a_clear_error():
    with pytest.raises(TypeError, match="StreamingHttpResponse"):
        encode(StreamingHttpResponse(iter([b"x"])))
