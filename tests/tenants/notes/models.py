"""The tenant app: one ``notes_note`` table in every tenant's schema."""

from django.db import models

from relaycache import CachedManager


class Note(models.Model):
    text = models.CharField(max_length=50)

    objects = CachedManager()
