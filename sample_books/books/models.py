"""The integration guide's models; ``CachedManager`` makes ``.cached()`` available."""

from django.db import models

from relaycache import CachedManager


class Book(models.Model):
    title = models.CharField(max_length=255)
    author = models.CharField(max_length=255)
    isbn = models.CharField(max_length=13, unique=True)
    publication_date = models.DateField()
    is_featured = models.BooleanField(default=False)

    objects = CachedManager()

    def __str__(self) -> str:
        return self.title


class Genre(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)

    objects = CachedManager()

    def __str__(self) -> str:
        return self.name


class BookGenre(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="genres")
    genre = models.ForeignKey(Genre, on_delete=models.CASCADE)

    objects = CachedManager()


class Publisher(models.Model):
    name = models.CharField(max_length=255)
    country = models.CharField(max_length=100)

    objects = CachedManager()

    def __str__(self) -> str:
        return self.name


class BookPublisher(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="publishers")
    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE, related_name="books")
    position = models.IntegerField(default=0)

    objects = CachedManager()
