"""Views the Django integration tests request; ``CALLS`` counts their executions."""

from __future__ import annotations

import io
from collections import Counter

from django.http import (
    FileResponse,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import cache_control

from relaycache.http import cached_view
from relaycache.orm.invalidation import table_tag
from tests.django.guide_cache_utils import cache_view
from tests.ormapp.models import Book

CALLS: Counter[str] = Counter()


def _body(name: str, request, extra: str = "") -> str:
    CALLS[name] += 1
    return f"{name} call={CALLS[name]} query={request.GET.urlencode()} {extra}".strip()


@cached_view(ttl=60, tags=["pages"])
def page(request):
    return HttpResponse(_body("page", request), headers={"X-Custom": "kept"},
                        content_type="text/plain; charset=utf-8")


@cached_view
def bare(request):
    return HttpResponse(_body("bare", request))


@cached_view(ttl=60, tags=lambda request, slug: [f"slug:{slug}", "slugs"])
def tagged(request, slug):
    return HttpResponse(_body("tagged", request, slug))


@cached_view()
def status(request, code):
    CALLS["status"] += 1
    if code == 302:
        return HttpResponseRedirect("/elsewhere/")
    return HttpResponse(f"status {code}", status=code)


@cached_view()
def json_view(request):
    return JsonResponse({"calls": _body("json", request), "ok": True})


@cached_view()
def cookie(request):
    response = HttpResponse(_body("cookie", request))
    response.set_cookie("visitor", "42")
    return response


@cached_view()
def streaming(request):
    CALLS["streaming"] += 1
    return StreamingHttpResponse(iter([b"chunk1 ", f"call={CALLS['streaming']}".encode()]))


@cached_view()
def file(request):
    CALLS["file"] += 1
    return FileResponse(io.BytesIO(f"file call={CALLS['file']}".encode()), filename="f.txt")


@cached_view()
@cache_control(private=True)
def private(request):
    return HttpResponse(_body("private", request))


@cached_view()
@cache_control(no_store=True)
def no_store(request):
    return HttpResponse(_body("no_store", request))


@cached_view()
@cache_control(max_age=300, public=True)
def public(request):
    return HttpResponse(_body("public", request))


@cached_view()
def vary_language(request):
    response = HttpResponse(_body("vary_language", request,
                                  request.headers.get("Accept-Language", "-")))
    response["Vary"] = "Accept-Language"
    return response


@cached_view()
def vary_star(request):
    response = HttpResponse(_body("vary_star", request))
    response["Vary"] = "*"
    return response


@cached_view(vary_on_headers=("X-Client",))
def declared(request):
    return HttpResponse(_body("declared", request, request.headers.get("X-Client", "-")))


@cached_view()
def template(request):
    CALLS["template"] += 1
    return TemplateResponse(request, "page.html", {"calls": CALLS["template"]})


@cached_view()
def csrf(request):
    return HttpResponse(_body("csrf", request, get_token(request)))


@cached_view()
def head_aware(request):
    CALLS["head_aware"] += 1
    if request.method == "HEAD":
        return HttpResponse("", headers={"X-Head": "1"})
    return HttpResponse(f"full body call={CALLS['head_aware']}")


@cached_view(tags=[table_tag("ormapp_book")])
def books(request):
    CALLS["books"] += 1
    titles = ",".join(Book.objects.order_by("title").values_list("title", flat=True))
    return HttpResponse(f"books call={CALLS['books']} [{titles}]")


@method_decorator(cached_view(ttl=60, tags=["cbv"]), name="dispatch")
class ClassView(View):
    greeting = "hello"

    def get(self, request, name):
        return HttpResponse(_body("cbv", request, f"{self.greeting} {name}"))

    def post(self, request, name):
        return HttpResponse(_body("cbv-post", request, name))


@cached_view(ttl=60, tags=["async"])
async def async_page(request):
    return HttpResponse(_body("async", request))


# -- the integration guide's helper, used as the guide shows it ------------------------

@cache_view(
    ttl=1800,
    tags=lambda request, slug: [f"book_page:{slug}", "book_pages"],
    key_func=lambda request, slug: f"book_list:{slug}"
)
def book_list_view(request, slug):
    return HttpResponse(_body("guide", request, slug))


@cache_view(ttl=60, tags=["guide_default_key"])
def guide_default_key(request):
    return JsonResponse({"body": _body("guide_default", request)})


@cache_view(ttl=60)
def guide_cookie(request):
    response = HttpResponse(_body("guide_cookie", request))
    response.set_cookie("visitor", "1")
    return response


@cache_view(ttl=60)
def guide_template(request):
    CALLS["guide_template"] += 1
    return TemplateResponse(request, "page.html", {"calls": CALLS["guide_template"]})


@cache_view(ttl=60)
def guide_streaming(request):
    return StreamingHttpResponse(iter([b"x"]))
