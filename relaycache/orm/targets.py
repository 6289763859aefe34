"""Models and instances as invalidation targets: the tables they live in, their tags.

Used by ``invalidate_model()``/``invalidate_obj()``, the ``relaycache invalidate
--model`` command and the ``{% cached models=... %}`` template tag, so that "the tags
of a model" is decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps
from django.db import connections, models, router

from .invalidation import invalidate_tables, table_tag, write_tags


def model_tables(model: type[models.Model]) -> list[str]:
    """The tables a model's rows live in: its own, its parents' (multi-table
    inheritance) and the auto-created through tables of its many-to-many fields."""
    meta = model._meta.concrete_model._meta  # type: ignore[union-attr]
    tables = [meta.db_table]
    tables += [parent._meta.db_table for parent in meta.get_parent_list()]
    for field in meta.local_many_to_many:
        through = field.remote_field.through
        if through is not None and through._meta.auto_created:
            tables.append(through._meta.db_table)
    return tables


def resolve_model(model: type[models.Model] | str) -> type[models.Model]:
    """A model class, or ``"app_label.ModelName"``; ``LookupError``/``TypeError`` with
    the reason otherwise."""
    if isinstance(model, str):
        try:
            return apps.get_model(model)
        except ValueError:
            raise LookupError(f"{model!r} is not 'app_label.ModelName'") from None
    if isinstance(model, type) and issubclass(model, models.Model):
        return model
    raise TypeError(f"expected a model class or 'app_label.ModelName', got {model!r}")


def model_tags(model: type[models.Model] | str, using: str | None = None) -> list[str]:
    """The table tags of ``model`` through ``using`` (``None``: the alias the router
    reads it from)."""
    resolved = resolve_model(model)
    alias = using or router.db_for_read(resolved)
    return [table_tag(table, alias) for table in model_tables(resolved)]


def model_write_tags(model: type[models.Model] | str, using: str) -> list[str]:
    """What a write to every row of ``model`` through ``using`` replaces: its
    :func:`model_tags` and what cached ORM reads of its tables depend on."""
    return write_tags(model_tables(resolve_model(model)), using)


def invalidate_model(model: type[models.Model] | str, using: str | None = None) -> None:
    """Drop every cached read of ``model``'s tables, through ``using`` or, by default,
    every database alias (where else its rows may be cached)."""
    resolved = resolve_model(model)
    for alias in [using] if using is not None else list(connections):
        invalidate_tables(model_tables(resolved), alias)


def invalidate_obj(instance: models.Model) -> None:
    """Drop every cached read that may include ``instance``: its model's tables in the
    database it was loaded from or saved to."""
    if not isinstance(instance, models.Model):
        raise TypeError(f"expected a model instance, got {instance!r}")
    invalidate_model(type(instance), instance._state.db)


def models_tags(labels: Iterable[type[models.Model] | str]) -> list[str]:
    """:func:`model_tags` of several models (each through its read alias)."""
    return [tag for label in labels for tag in model_tags(label)]
