"""Invalidation of the explicitly tagged services.

``Book.objects.cached()`` needs none of this: every write invalidates the tables it
touches. The guide's decorated services name their own tags, so one receiver keeps
them fresh; it is the one-line pattern to copy for your own tagged functions.
"""

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from relaycache import invalidate

from .models import Book, BookGenre, BookPublisher


@receiver([post_save, post_delete], sender=Book)
@receiver([post_save, post_delete], sender=BookGenre)
@receiver([post_save, post_delete], sender=BookPublisher)
def invalidate_book_listings(sender, instance, **kwargs):
    book_id = instance.id if sender is Book else instance.book_id
    invalidate(tags=[f"book:{book_id}", "books", "book_listings", "book_stats", "book_search"],
               backend=settings.CACHE_BACKEND)
