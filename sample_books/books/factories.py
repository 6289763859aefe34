"""factory-boy factories for realistic sample data (used by ``seed_books``)."""

import factory
from django.utils.text import slugify
from factory import fuzzy

from .models import Book, Genre, Publisher

GENRES = [
    "Science Fiction", "Fantasy", "Mystery", "Thriller", "Romance", "Horror", "History",
    "Biography", "Poetry", "Drama", "Travel", "Cooking", "Philosophy", "Economics",
    "Mathematics", "Physics", "Chemistry", "Biology", "Medicine", "Law", "Politics",
    "Art", "Music", "Film", "Photography", "Architecture", "Design", "Programming",
    "Databases", "Networks", "Gardening", "Sports", "Games", "Religion", "Mythology",
    "Psychology", "Sociology", "Linguistics", "Education", "Parenting", "Humor",
    "Comics", "Children", "Young Adult", "Classics", "Essays", "Westerns", "Crime",
    "Adventure", "Nature",
]


class GenreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Genre

    name = factory.Iterator(GENRES)
    slug = factory.LazyAttributeSequence(lambda o, n: f"{slugify(o.name)}-{n}")


class PublisherFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Publisher

    name = factory.Faker("company")
    country = factory.Faker("country")


class BookFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Book

    title = factory.Faker("sentence", nb_words=4, variable_nb_words=True)
    author = factory.Faker("name")
    isbn = factory.Sequence(lambda n: f"978{n:010d}")
    publication_date = factory.Faker("date_between", start_date="-60y", end_date="today")
    is_featured = fuzzy.FuzzyChoice([True, False, False, False, False])
