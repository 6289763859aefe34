"""Invalidation of the explicitly tagged services.

``Book.objects.cached()`` needs none of this: every write invalidates the tables it
touches. The guide's decorated services name their own tags, so these receivers keep
them fresh; model signals do not fire for ``QuerySet.update()`` or ``bulk_create()``,
so after those, until the TTL, such services may lag: prefer ``.cached()`` querysets.
"""

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from relaycache import invalidate

from .models import Book, BookGenre, BookPublisher, Genre, Publisher

LISTINGS = ["books", "book_listings", "book_stats", "book_search"]


@receiver([post_save, post_delete], sender=Book)
@receiver([post_save, post_delete], sender=BookGenre)
@receiver([post_save, post_delete], sender=BookPublisher)
def invalidate_book_listings(sender, instance, **kwargs):
    book_id = instance.id if sender is Book else instance.book_id
    invalidate(tags=[f"book:{book_id}", *LISTINGS], backend=settings.CACHE_BACKEND)


@receiver([post_save, post_delete], sender=Genre)
@receiver([post_save, post_delete], sender=Publisher)
def invalidate_names(sender, instance, **kwargs):
    """A renamed genre or publisher shows in every book's details: drop them all."""
    invalidate(tags=LISTINGS, backend=settings.CACHE_BACKEND)
