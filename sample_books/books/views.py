import time

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.db.models import Count
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from relaycache import invalidate

from .models import Genre
from .services import books_in_genre, get_books_top


class _CacheMeter:
    """Hit or miss and time of one request's cache work, shown on the page."""

    def __enter__(self):
        self.before = settings.CACHE_BACKEND.stats.snapshot()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.ms = (time.perf_counter() - self.started) * 1000
        after = settings.CACHE_BACKEND.stats.snapshot()
        self.hits = after["hits"] - self.before["hits"]
        self.misses = after["misses"] - self.before["misses"]
        self.badge = "hit" if self.hits and not self.misses else "miss"


def genre_index(request):
    with _CacheMeter() as meter:
        genres = list(Genre.objects.cached().annotate(n_books=Count("bookgenre"))
                      .order_by("name").values("name", "slug", "n_books"))
    return render(request, "books/index.html", {"genres": genres, "meter": meter})


def book_list_view(request, slug):
    genre = get_object_or_404(Genre.objects.cached(), slug=slug)
    with _CacheMeter() as meter:
        books = books_in_genre(slug)
        books_top = get_books_top(slug)
    return render(request, "books/book_list.html",
                  {"genre": genre, "books": books, "books_top": books_top, "meter": meter})


@require_POST
@staff_member_required
def clear_cache_api(request):
    """The guide's cache-clearing endpoint: staff only, POST, CSRF-protected."""
    cache_type = request.POST.get("cache_type")
    if cache_type == "books":
        invalidate(tags=["books"], backend=settings.CACHE_BACKEND)
        return JsonResponse({"status": "success", "message": "Book cache cleared"})
    if cache_type == "stats":
        invalidate(tags=["book_stats"], backend=settings.CACHE_BACKEND)
        return JsonResponse({"status": "success", "message": "Stats cache cleared"})
    if cache_type == "all":
        settings.CACHE_BACKEND.clear()
        return JsonResponse({"status": "success", "message": "All cache cleared"})
    return JsonResponse({"status": "error", "message": "Invalid cache_type"}, status=400)
