import datetime as dt

import pytest

from relaycache import InMemoryCache, set_default_backend
from tests.ormapp.models import Book, Genre, BookGenre, Review

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def orm_cache():
    backend = InMemoryCache()
    set_default_backend(backend)
    return backend


def test_smoke(orm_cache, django_assert_num_queries):
    g = Genre.objects.create(name="SF", slug="sf")
    b = Book.objects.create(title="Dune", author="Herbert", isbn="1", publication_date=dt.date(1965, 8, 1))
    BookGenre.objects.create(book=b, genre=g)
    qs = Book.objects.cached().filter(genres__genre__slug="sf").order_by("title")
    first = list(qs)
    with django_assert_num_queries(0):
        again = list(Book.objects.cached().filter(genres__genre__slug="sf").order_by("title"))
    assert [x.title for x in again] == ["Dune"]
    assert again[0].publication_date == dt.date(1965, 8, 1)
    Book.objects.cached().count()
    with django_assert_num_queries(0):
        assert Book.objects.cached().count() == 1
    b.title = "Dune 2"
    b.save()
    assert [x.title for x in Book.objects.cached().filter(genres__genre__slug="sf")] == ["Dune 2"]
    Genre.objects.filter(slug="sf").update(slug="scifi")
    assert list(Book.objects.cached().filter(genres__genre__slug="sf")) == []
    print(orm_cache.stats, Book.objects.cached().filter(genres__genre__slug="sf").cache_info())
    vals = list(Book.objects.cached().values_list("title", "publication_date"))
    with django_assert_num_queries(0):
        assert list(Book.objects.cached().values_list("title", "publication_date")) == vals
    assert type(vals[0]) is tuple
    Review.objects.create(book=b, stars=3)
    agg = Book.objects.cached().aggregate(n=__import__("django.db.models", fromlist=["Count"]).Count("reviews"))
    with django_assert_num_queries(0):
        assert Book.objects.cached().aggregate(n=__import__("django.db.models", fromlist=["Count"]).Count("reviews")) == agg
    Review.objects.create(book=b, stars=3)
    assert Book.objects.cached().aggregate(n=__import__("django.db.models", fromlist=["Count"]).Count("reviews")) == {"n": 2}
    with django_assert_num_queries(1):
        assert Book.objects.cached().exists()
    with django_assert_num_queries(0):
        assert Book.objects.cached().exists()
