from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from relaycache import invalidate

from .forms import BookForm
from .meter import CacheMeter
from .models import Book, Genre
from .services import BOOKS_PER_PAGE, BookService, genre_books, get_books_top, page_of_book


def genre_index(request):
    with CacheMeter() as meter:
        genres = list(Genre.objects.cached().annotate(n_books=Count("bookgenre"))
                      .order_by("name").values("name", "slug", "n_books"))
    return render(request, "books/index.html", {"genres": genres, "meter": meter})


def book_list_view(request, slug):
    """One page of a genre's books: the Paginator's count and the page's rows are
    cached queries of their own (every page has its own entry)."""
    with CacheMeter() as meter:
        genre = get_object_or_404(Genre.objects.cached(), slug=slug)
        paginator = Paginator(genre_books(slug), BOOKS_PER_PAGE)
        page = paginator.get_page(request.GET.get("page"))
        books = list(page.object_list)
        books_top = meter.call(get_books_top, slug)
    page_range = list(paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1))
    return render(request, "books/book_list.html", {
        "genre": genre, "books": books, "books_top": books_top, "page": page,
        "page_range": page_range, "ellipsis": Paginator.ELLIPSIS, "meter": meter})


@require_http_methods(["GET", "HEAD", "POST"])
def book_detail(request, pk):
    """A book, and a form to edit it (a local demo: no login).

    A valid POST saves and redirects here (post/redirect/get): the write invalidated
    every cached read of the books table, so the page it lands on misses, then hits
    on reload, and shows the new values at once.
    """
    form = None
    if request.method == "POST":
        form = BookForm(request.POST, instance=get_object_or_404(Book, pk=pk))
        if form.is_valid():
            if not form.has_changed():
                messages.info(request, "Nothing changed: nothing written, nothing "
                                       "invalidated.")
                return redirect("book_detail", pk=pk)
            with CacheMeter() as writing:
                book = form.save()
            messages.success(request, (
                f"Saved “{book.title}”. The write invalidated "
                f"{', '.join(writing.invalidated) or 'no tag'}: every cached read "
                "depending on them misses once. This page just did (see the list "
                "below); reload it to see them hit."))
            return redirect("book_detail", pk=pk)
    with CacheMeter() as meter:
        book = get_object_or_404(Book.objects.cached(), pk=pk)
        details = meter.call(BookService.get_book_details, pk)
        genres = list(Genre.objects.cached().filter(bookgenre__book_id=pk)
                      .order_by("name").values("name", "slug"))
        for genre in genres:
            genre["page"] = page_of_book(genre["slug"], book)
    if form is None:
        form = BookForm(instance=book)
    return render(request, "books/book_detail.html", {
        "book": book, "details": details, "genres": genres, "form": form, "meter": meter})


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
