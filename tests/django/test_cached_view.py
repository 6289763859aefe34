"""``relaycache.http.cached_view`` through Django's test client, on every backend."""

from __future__ import annotations

import asyncio
import zoneinfo
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse
from django.test import AsyncClient, RequestFactory
from django.utils import timezone, translation

from relaycache import RedisCache, invalidate
from relaycache.http import cached_view
from relaycache.testing import use_backend
from tests.django import views
from tests.django.views import CALLS
from tests.ormapp.models import Book

pytestmark = [pytest.mark.urls("tests.django.urls"), pytest.mark.usefixtures("default_backend")]


def body(response) -> str:
    if response.streaming:
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


def test_get_is_cached_and_served_identically(client):
    first = client.get("/page/?b=2&a=1")
    second = client.get("/page/?a=1&b=2")  # same parameters, another order
    assert CALLS["page"] == 1
    assert second.status_code == first.status_code == 200
    assert body(second) == body(first) == "page call=1 query=b=2&a=1"
    assert dict(second.headers) == dict(first.headers)
    assert second["X-Custom"] == "kept"
    assert second.charset == "utf-8"


def test_each_hit_is_a_fresh_response(client):
    client.get("/page/")
    hit = client.get("/page/")
    hit["X-Custom"] = "changed by middleware"
    hit.content = b"changed"
    again = client.get("/page/")
    assert again["X-Custom"] == "kept"
    assert body(again) == "page call=1 query="
    assert CALLS["page"] == 1


def test_query_values_path_and_host_are_in_the_key(client, settings):
    settings.ALLOWED_HOSTS = ["a.test", "b.test", "testserver"]
    client.get("/page/?a=1")
    client.get("/page/?a=2")
    client.get("/page/?a=1&a=2")
    client.get("/page/?a=2&a=1")  # a list's order is the view's business: kept
    client.get("/page/?a=1", headers={"host": "b.test"})
    client.get("/page/?a=1", secure=True)
    assert CALLS["page"] == 6
    client.get("/page/?a=1")
    client.get("/page/?a=2&a=1")
    assert CALLS["page"] == 6


def test_active_language_and_time_zone_are_in_the_key():
    request = RequestFactory().get("/page/")
    for language, zone in (("en", "UTC"), ("fr", "UTC"), ("en", "Europe/Paris"),
                           ("fr", "UTC"), ("en", "UTC")):
        with translation.override(language), timezone.override(zoneinfo.ZoneInfo(zone)):
            views.page(request)
    assert CALLS["page"] == 3


def test_bare_decorator(client):
    client.get("/bare/")
    client.get("/bare/")
    assert CALLS["bare"] == 1


def test_only_get_is_stored(client):
    client.post("/page/")
    client.post("/page/")
    client.put("/page/")
    client.delete("/page/")
    assert CALLS["page"] == 4
    client.get("/page/")
    response = client.post("/page/")
    assert CALLS["page"] == 6
    assert body(response) == "page call=6 query="


def test_head_is_served_from_the_get_entry(client):
    client.get("/head-aware/")
    head = client.head("/head-aware/")
    assert CALLS["head_aware"] == 1
    assert head.status_code == 200 and "X-Head" not in head


def test_head_responses_are_never_stored(client):
    head = client.head("/head-aware/")
    assert head["X-Head"] == "1"
    get = client.get("/head-aware/")
    assert body(get) == "full body call=2"
    assert CALLS["head_aware"] == 2


def test_authenticated_users_bypass_the_cache():
    factory = RequestFactory()
    anonymous = factory.get("/page/")
    anonymous.user = AnonymousUser()
    views.page(anonymous)
    views.page(anonymous)
    assert CALLS["page"] == 1
    member = factory.get("/page/")
    member.user = SimpleNamespace(is_authenticated=True)
    assert body(views.page(member)) == "page call=2 query="
    assert body(views.page(member)) == "page call=3 query="


def test_requests_with_credentials_bypass_the_cache(client):
    client.get("/page/")
    response = client.get("/page/", headers={"authorization": "Token secret"})
    client.get("/page/", headers={"authorization": "Token secret"})
    assert body(response) == "page call=2 query="
    assert CALLS["page"] == 3


def test_declared_authorization_header_keys_the_cache(client):
    @cached_view(vary_on_headers=["Authorization"])
    def api(request):
        CALLS["api"] += 1
        return HttpResponse(f"for {request.headers.get('Authorization')}")

    factory = RequestFactory()
    for token in ("Token a", "Token b", "Token a"):
        api(factory.get("/api/", headers={"authorization": token}))
    assert CALLS["api"] == 2


@pytest.mark.parametrize("code", [404, 500, 302, 201])
def test_only_200_is_stored(client, code):
    client.get(f"/status/{code}/")
    client.get(f"/status/{code}/")
    assert CALLS["status"] == 2


def test_200_status_view_is_stored(client):
    client.get("/status/200/")
    client.get("/status/200/")
    assert CALLS["status"] == 1


@pytest.mark.parametrize(("url", "name"), [
    ("/cookie/", "cookie"), ("/private/", "private"), ("/no-store/", "no_store"),
    ("/vary-star/", "vary_star"), ("/csrf/", "csrf"),
])
def test_never_stored(client, url, name):
    responses = [client.get(url) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert CALLS[name] == 3
    second = responses[-1]
    assert "call=3" in body(second)
    if name == "cookie":
        assert second.cookies["visitor"].value == "42"


@pytest.mark.parametrize(("url", "name"), [("/streaming/", "streaming"), ("/file/", "file")])
def test_streaming_responses_are_never_stored(client, url, name):
    client.get(url)
    second = client.get(url)
    assert second.streaming
    assert body(second).endswith("call=2")
    assert CALLS[name] == 2


def test_public_cache_control_is_stored(client):
    client.get("/public/")
    response = client.get("/public/")
    assert CALLS["public"] == 1
    assert "max-age=300" in response["Cache-Control"]


def test_modified_session_is_never_stored():
    request = RequestFactory().get("/page/")
    request.session = SimpleNamespace(modified=False)
    views.page(request)
    assert views.page(request).content == b"page call=1 query="
    request.session = SimpleNamespace(modified=True)

    @cached_view()
    def cart(request):
        CALLS["cart"] += 1
        request.session.modified = True
        return HttpResponse("cart")

    fresh = RequestFactory().get("/cart/")
    fresh.session = SimpleNamespace(modified=False)
    cart(fresh)
    fresh.session.modified = False
    cart(fresh)
    assert CALLS["cart"] == 2


def test_vary_header_keys_the_entry(client):
    def get(language=None):
        headers = {"accept-language": language} if language else {}
        return body(client.get("/vary-language/", headers=headers))

    # The first response reveals that the view varies: it is recorded, not stored.
    assert get("en") == "vary_language call=1 query= en"
    assert get("en") == "vary_language call=2 query= en"
    assert get("en") == "vary_language call=2 query= en"
    assert get("fr") == "vary_language call=3 query= fr"
    assert get("fr") == "vary_language call=3 query= fr"
    assert get("en") == "vary_language call=2 query= en"
    assert get() == "vary_language call=4 query= -"
    assert get() == "vary_language call=4 query= -"


def test_declared_headers_key_the_entry_from_the_first_request(client):
    def get(value):
        return body(client.get("/declared/", headers={"x-client": value}))

    assert get("a") == "declared call=1 query= a"
    assert get("a") == "declared call=1 query= a"
    assert get("b") == "declared call=2 query= b"
    assert get("A") == "declared call=3 query= A"


def test_a_view_that_starts_varying_is_keyed_on_the_header_from_then_on():
    flip = {"vary": ""}

    @cached_view(tags=["sv"])
    def sometimes_varies(request):
        CALLS["sv"] += 1
        response = HttpResponse(f"call={CALLS['sv']} lang={request.headers.get('x-lang')}")
        if flip["vary"]:
            response["Vary"] = flip["vary"]
        return response

    factory = RequestFactory()

    def get(lang):
        return sometimes_varies(factory.get("/sv/", headers={"x-lang": lang})).content

    assert get("en") == b"call=1 lang=en"
    assert get("fr") == b"call=1 lang=en"  # no Vary: one response for everyone
    flip["vary"] = "X-Lang"  # a deploy: the view now varies
    assert get("de") == b"call=1 lang=en"  # the old entry, valid for everyone, until...
    invalidate(["sv"])
    assert get("de") == b"call=2 lang=de"  # reveals X-Lang: recorded, not stored
    assert get("de") == b"call=3 lang=de"
    assert get("de") == b"call=3 lang=de"
    assert get("fr") == b"call=4 lang=fr"
    assert get("fr") == b"call=4 lang=fr"
    assert get("de") == b"call=3 lang=de"


def test_vary_index_grows_and_old_variants_are_not_reused():
    mode = {"vary": "X-A"}

    @cached_view()
    def view(request):
        CALLS["v"] += 1
        response = HttpResponse(f"call={CALLS['v']}")
        response["Vary"] = mode["vary"]
        return response

    factory = RequestFactory()

    def get(a, b):
        return view(factory.get("/v/", headers={"x-a": a, "x-b": b})).content

    assert get("1", "1") == b"call=1"  # recorded X-A
    assert get("1", "1") == b"call=2"  # stored under X-A
    assert get("1", "2") == b"call=2"  # X-B does not matter
    mode["vary"] = "X-A, X-B"
    invalidate(["x"])
    assert get("2", "1") == b"call=3"  # new X-A value: miss; reveals X-B, recorded
    assert get("1", "1") == b"call=4"  # index is now X-A + X-B: old entry unreachable
    assert get("1", "1") == b"call=4"
    assert get("1", "2") == b"call=5"


def test_tags_list_and_callable(client):
    client.get("/tagged/x/")
    client.get("/tagged/y/")
    client.get("/tagged/x/")
    assert CALLS["tagged"] == 2
    invalidate(["slug:x"])
    assert body(client.get("/tagged/x/")) == "tagged call=3 query= x"
    assert body(client.get("/tagged/y/")) == "tagged call=2 query= y"
    invalidate(["slugs"])
    client.get("/tagged/y/")
    assert CALLS["tagged"] == 4
    client.get("/page/")
    invalidate(["pages"])
    assert body(client.get("/page/")) == "page call=2 query="


def test_invalidation_during_the_view_is_not_stored_stale(client):
    """Stamps are taken before the view runs (no stale set)."""
    @cached_view(tags=["race"])
    def racing(request):
        CALLS["race"] += 1
        if CALLS["race"] == 1:
            invalidate(["race"])  # a writer commits while the view renders
        return HttpResponse(f"call={CALLS['race']}")

    factory = RequestFactory()
    assert racing(factory.get("/race/")).content == b"call=1"
    assert racing(factory.get("/race/")).content == b"call=2"
    assert racing(factory.get("/race/")).content == b"call=2"


def test_json_response(client):
    first = client.get("/json/")
    second = client.get("/json/")
    assert CALLS["json"] == 1
    assert second["Content-Type"] == "application/json"
    assert second.json() == first.json() == {"calls": "json call=1 query=", "ok": True}


@pytest.mark.usefixtures("templates")
def test_template_response_is_rendered_and_stored(client):
    first = client.get("/template/")
    second = client.get("/template/")
    assert body(first) == body(second) == "template calls=1"
    assert CALLS["template"] == 1


def test_class_based_view_with_method_decorator(client):
    assert body(client.get("/cbv/alice/")) == "cbv call=1 query= hello alice"
    assert body(client.get("/cbv/alice/")) == "cbv call=1 query= hello alice"
    assert body(client.get("/cbv/bob/")) == "cbv call=2 query= hello bob"
    client.post("/cbv/alice/")
    client.post("/cbv/alice/")
    assert CALLS["cbv-post"] == 2
    invalidate(["cbv"])
    assert body(client.get("/cbv/alice/")) == "cbv call=3 query= hello alice"


def test_async_view():
    async def scenario():
        client = AsyncClient()
        first = await client.get("/async/")
        second = await client.get("/async/")
        head = await client.head("/async/")
        posted = await client.post("/async/")
        return first, second, head, posted

    first, second, head, posted = asyncio.run(scenario())
    assert first.content == second.content == b"async call=1 query="
    assert head.status_code == 200
    assert posted.content == b"async call=2 query="
    assert CALLS["async"] == 2


def test_async_view_bypasses_for_authenticated_users():
    async def scenario():
        async def auser():
            return SimpleNamespace(is_authenticated=True)

        factory = RequestFactory()
        responses = []
        for _ in range(2):
            request = factory.get("/async/")
            request.auser = auser
            responses.append(await views.async_page(request))
        return responses

    first, second = asyncio.run(scenario())
    assert (first.content, second.content) == (b"async call=1 query=", b"async call=2 query=")


def test_async_view_not_stored_when_uncacheable():
    @cached_view()
    async def private_async(request):
        CALLS["pa"] += 1
        response = HttpResponse(f"call={CALLS['pa']}")
        response["Cache-Control"] = "private"
        return response

    async def twice():
        factory = RequestFactory()
        return [await private_async(factory.get("/pa/")) for _ in range(2)]

    assert [r.content for r in asyncio.run(twice())] == [b"call=1", b"call=2"]


def test_disallowed_host_is_never_cached(client):
    client.get("/page/", headers={"host": "evil.test"})
    client.get("/page/", headers={"host": "evil.test"})
    assert CALLS["page"] == 2


def test_views_keep_working_when_redis_is_down(client, unreachable_backend):
    with use_backend(unreachable_backend):
        for _ in range(3):
            assert client.get("/page/").status_code == 200
    assert CALLS["page"] == 3
    assert unreachable_backend.stats.errors >= 1


def test_a_view_hit_is_counted(client, relaycache_counter):
    client.get("/page/")
    relaycache_counter.reset()
    client.get("/page/")
    relaycache_counter.assert_misses(1)  # the variant index: never written for this view
    relaycache_counter.assert_hits(1)


@pytest.mark.django_db(transaction=True)
def test_orm_writes_invalidate_views_tagged_with_their_tables(client):
    Book.objects.create(title="B", author="A", isbn="1", publication_date="2024-01-01")
    assert body(client.get("/books/")) == "books call=1 [B]"
    assert body(client.get("/books/")) == "books call=1 [B]"
    Book.objects.create(title="A", author="A", isbn="2", publication_date="2024-01-01")
    assert body(client.get("/books/")) == "books call=2 [A,B]"


def test_explicit_backend(client, make_redis_backend, default_backend):
    own = make_redis_backend()

    @cached_view(backend=own, tags=["own"])
    def view(request):
        CALLS["own"] += 1
        return HttpResponse("own")

    request = RequestFactory().get("/own/")
    view(request)
    view(request)
    assert CALLS["own"] == 1
    assert isinstance(own, RedisCache) and own.stats.hits == 1
    assert default_backend.stats.hits == 0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"ttl": -1}, ValueError),
    ({"ttl": float("inf")}, ValueError),
    ({"tags": "books"}, TypeError),
    ({"tags": [1]}, TypeError),
    ({"backend": object()}, TypeError),
    ({"vary_on_headers": "Accept-Language"}, TypeError),
    ({"vary_on_headers": [""]}, TypeError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        cached_view(**kwargs)
