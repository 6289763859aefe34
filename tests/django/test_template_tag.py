"""``{% cached %}``: fragments cached under tags, dropped by writes to the models named."""

from __future__ import annotations

import itertools

import pytest
from django.template import Context, Engine, TemplateSyntaxError

from relaycache import invalidate, invalidate_model, invalidate_obj
from tests.ormapp.models import Book, Label

ENGINE = Engine(libraries={"relaycache": "relaycache.templatetags.relaycache"})


def render(source: str, **context: object) -> str:
    return ENGINE.from_string("{% load relaycache %}" + source).render(Context(context))


def counter():
    """A context value that counts how often the fragment really rendered."""
    return itertools.count(1).__next__


def book(isbn: str = "1") -> Book:
    return Book.objects.create(title="Dune", author="Herbert", isbn=isbn,
                               publication_date="1965-08-01")


def test_a_fragment_renders_once_and_varies_on_its_variables(default_backend):
    tick = counter()
    source = '{% cached 60 "side" lang %}[{{ tick }} {{ lang }}]{% endcached %}'
    assert render(source, tick=tick, lang="en") == "[1 en]"
    assert render(source, tick=tick, lang="en") == "[1 en]"
    assert render(source, tick=tick, lang="fr") == "[2 fr]"


def test_tags_drop_the_fragment(default_backend):
    tick = counter()
    source = '{% cached None "side" tags="home, sidebar" %}{{ tick }}{% endcached %}'
    assert render(source, tick=tick) == render(source, tick=tick) == "1"
    invalidate(["sidebar"], backend=default_backend)
    assert render(source, tick=tick) == "2"


@pytest.mark.django_db(transaction=True)
def test_writes_to_the_models_named_drop_the_fragment(default_backend):
    tick = counter()
    source = ('{% cached 60 "books" models="ormapp.Book" %}'
              '{{ tick }}:{{ books.count }}{% endcached %}')
    books = Book.objects.all()
    assert render(source, tick=tick, books=books) == "1:0"
    assert render(source, tick=tick, books=books) == "1:0"
    created = book()
    assert render(source, tick=tick, books=books) == "2:1"
    Label.objects.create(name="sf")  # another model: the fragment stays
    assert render(source, tick=tick, books=books) == "2:1"
    created.labels.add(Label.objects.get())  # Book's many-to-many table is Book's
    assert render(source, tick=tick, books=books) == "3:1"


@pytest.mark.django_db(transaction=True)
def test_invalidate_model_and_invalidate_obj(default_backend):
    first = book()
    queries = Book.objects.cached().filter(pk=first.pk)
    assert queries.cache_info().cached
    for invalidating in (lambda: invalidate_model(Book), lambda: invalidate_model("ormapp.Book"),
                         lambda: invalidate_obj(first)):
        list(queries.all())
        hits = default_backend.stats.hits
        list(queries.all())
        assert default_backend.stats.hits == hits + 1
        invalidating()
        list(queries.all())
        assert default_backend.stats.hits == hits + 1, "served after the invalidation"


@pytest.mark.parametrize(("source", "message"), [
    ('{% cached 60 %}x{% endcached %}', "takes a ttl and a fragment name"),
    ('{% cached 60 "f" model="ormapp.Book" %}x{% endcached %}', "has no option 'model'"),
])
def test_syntax_errors_name_the_fix(source, message):
    with pytest.raises(TemplateSyntaxError, match=message):
        render(source)


@pytest.mark.parametrize(("source", "message"), [
    ('{% cached -5 "f" %}x{% endcached %}', "ttl must be positive"),
    ('{% cached 60 "f" models="ormapp.Nope" %}x{% endcached %}', "Nope"),
    ('{% cached 60 "f" models="Book" %}x{% endcached %}', "app_label.ModelName"),
    ('{% cached 60 "f" backend=nothing_here %}x{% endcached %}', "relaycache backend"),
])
def test_bad_values_are_clear_errors(default_backend, source, message):
    with pytest.raises(TemplateSyntaxError, match=message):
        render(source, nothing_here="not a backend")


def test_invalidate_helpers_reject_what_is_not_a_model():
    with pytest.raises(TypeError, match="model class"):
        invalidate_model(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model instance"):
        invalidate_obj(Book)  # type: ignore[arg-type]
