"""Models the ORM tests cache: the integration guide's book shop plus edge cases."""

import uuid

from django.db import models

from relaycache import CachedManager


class Publisher(models.Model):
    name = models.CharField(max_length=255)
    country = models.CharField(max_length=100)

    objects = CachedManager()


class Genre(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)

    objects = CachedManager()


class Label(models.Model):
    """Target of an auto-created many-to-many through table."""

    name = models.CharField(max_length=50)

    objects = CachedManager()


class Book(models.Model):
    title = models.CharField(max_length=255)
    author = models.CharField(max_length=255)
    isbn = models.CharField(max_length=13, unique=True)
    publication_date = models.DateField()
    is_featured = models.BooleanField(default=False)
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    main_publisher = models.ForeignKey(Publisher, null=True, blank=True,
                                       on_delete=models.SET_NULL, related_name="main_books")
    labels = models.ManyToManyField(Label, blank=True, related_name="books")

    objects = CachedManager()

    class Meta:
        ordering = ["id"]


class BookGenre(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="genres")
    genre = models.ForeignKey(Genre, on_delete=models.CASCADE)

    objects = CachedManager()


class BookPublisher(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="publishers")
    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE, related_name="books")
    position = models.IntegerField(default=0)

    objects = CachedManager()


class Review(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="reviews")
    stars = models.IntegerField()
    text = models.TextField(blank=True)

    objects = CachedManager()


class Ebook(Book):
    """Multi-table inheritance: reads join the parent's table."""

    file_size = models.IntegerField(default=0)

    objects = CachedManager()


class Shelf(models.Model):
    """A many-to-many with an explicit through model."""

    name = models.CharField(max_length=50)
    books = models.ManyToManyField(Book, through="ShelfItem", related_name="shelves")

    objects = CachedManager()


class ShelfItem(models.Model):
    shelf = models.ForeignKey(Shelf, on_delete=models.CASCADE)
    book = models.ForeignKey(Book, on_delete=models.CASCADE)
    note = models.CharField(max_length=50, blank=True)

    objects = CachedManager()


class AllTypes(models.Model):
    """One column of every type whose Python type must survive the cache."""

    big = models.BigIntegerField(null=True)
    small = models.SmallIntegerField(null=True)
    flag = models.BooleanField(null=True)
    char = models.CharField(max_length=50, blank=True, default="")
    text = models.TextField(blank=True, default="")
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    span = models.DurationField(null=True)
    amount = models.DecimalField(max_digits=12, decimal_places=4, null=True)
    ratio = models.FloatField(null=True)
    ident = models.UUIDField(default=uuid.uuid4)
    blob = models.BinaryField(null=True)
    data = models.JSONField(null=True)
    email = models.EmailField(blank=True, default="")
    slug = models.SlugField(blank=True, default="")
    ip = models.GenericIPAddressField(null=True)

    objects = CachedManager()


class Plain(models.Model):
    """A model with Django's own manager: its queries are never cached, but writes to
    its table still invalidate cached queries that join it."""

    name = models.CharField(max_length=50)
    book = models.ForeignKey(Book, null=True, on_delete=models.CASCADE, related_name="plains")


class SchemaNote(models.Model):
    """A table in another schema, by Django's ``db_table`` trick. Unmanaged: on
    PostgreSQL the test that uses it creates the schema and the table (SQLite has no
    schemas)."""

    text = models.CharField(max_length=50)

    objects = CachedManager()

    class Meta:
        managed = False
        db_table = 'ormapp_elsewhere"."note'
