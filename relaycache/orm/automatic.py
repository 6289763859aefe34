"""``RELAYCACHE["MODELS"]``: caching chosen in settings, for models whose managers you
cannot change (``auth.User``, ``contenttypes.ContentType``) as well as your own.

    RELAYCACHE = {"MODELS": {
        "auth.User": {"TTL": 900, "OPERATIONS": ["get", "exists"]},
        "contenttypes": {},              # every model of the app, every operation
        "*": {"OPERATIONS": ["get"]},    # every other model
    }}

Django has no documented hook that chooses the queryset class of a model it did not
define, so this module swaps, once per model, the class of each manager *instance* the
model reads through for a subclass made here (:func:`automatic_manager_class`). The
subclass makes querysets whose class is in turn a subclass of the model's own
(:func:`automatic_queryset_class`), adding :class:`~.queryset.CachedQuerySetMixin` and a
choice of options per operation. No method of a Django class and no manager class
shared between models (``models.Manager`` stays as it is) is changed: only the manager
objects of the models the setting names, and only when it names some; the related
manager classes Django derived from the old classes are forgotten, to be derived again.

What follows from that:

- related managers (``group.user_set``, ``user.groups``) are classes Django derives
  from the related model's default manager class, so they follow the related model's
  setting, and so do ``prefetch_related()`` queries through them;
- the swapped classes keep the original's name and module, and compare equal to the
  original manager, so migrations never see a change;
- forward foreign keys and reverse one-to-ones (``book.author``) are read through the
  model's base manager, a plain ``Manager`` Django makes, which is left alone;
- querysets pickle as the model's own class (rebuilt here in any process).

The setting is read when the app is ready and whenever ``RELAYCACHE`` changes; each
queryset decides from the current rules, so removing a model stops its caching at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models import Model

from ..core.keys import check_ttl
from .options import CacheOptions, explicit_options
from .queryset import CachedQuerySetMixin, _prefetch_options

if TYPE_CHECKING:
    from django.apps.registry import Apps

    _ManagerBase = models.Manager[Any]
else:
    _ManagerBase = object

OPERATIONS = ("get", "fetch", "count", "aggregate", "exists")
"""``get()`` (and ``get_or_create()``, ``latest()``...), ``fetch`` (iterating:
``list()``, ``first()``, slicing, ``values()``...), ``count()``, ``aggregate()``,
``exists()`` (and ``contains()``)."""
ENTRY_KEYS = ("TTL", "OPERATIONS", "SINGLEFLIGHT")

OFF = CacheOptions(enabled=False, automatic=True)
"""What a model, or an operation, the setting does not cache gets."""


@dataclass(frozen=True)
class ModelRule:
    """One entry of ``RELAYCACHE["MODELS"]``, checked."""

    options: CacheOptions
    operations: frozenset[str]


_rules: dict[str, ModelRule] = {}
"""By ``"*"``, app label or ``"app_label.modelname"`` (lower case)."""
_resolved: dict[type[Model], dict[str, CacheOptions] | None] = {}
"""Per model, the options of each operation, or ``None`` if no entry names it."""


def parse_models(value: object) -> dict[str, ModelRule]:
    """``RELAYCACHE["MODELS"]`` checked against the installed apps; raises
    ``ImproperlyConfigured`` naming what is wrong. A list of names is every operation
    with the default TTL for each."""
    from django.apps import apps

    if isinstance(value, list | tuple):
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        raise ImproperlyConfigured(
            "RELAYCACHE['MODELS'] must be a dict of 'app_label.Model', 'app_label' or '*' "
            f"to options (or a list of those names), got {type(value).__qualname__}")
    rules: dict[str, ModelRule] = {}
    for name, entry in value.items():
        where = f"RELAYCACHE['MODELS'][{name!r}]"
        key = _resolve_name(apps, name)
        if key in rules:
            raise ImproperlyConfigured(f"{where} names {key!r} a second time")
        rules[key] = _parse_entry(where, entry)
    return rules


def _resolve_name(apps: Apps, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ImproperlyConfigured(
            f"RELAYCACHE['MODELS'] keys are 'app_label.Model', 'app_label' or '*', got {name!r}")
    if name == "*":
        return name
    app_label, _, model_name = name.partition(".")
    try:
        app = apps.get_app_config(app_label)
    except LookupError:
        raise ImproperlyConfigured(
            f"RELAYCACHE['MODELS'] names {name!r}, but no installed app has the label "
            f"{app_label!r}") from None
    if not model_name:
        return app.label
    try:
        model = app.get_model(model_name)
    except LookupError:
        known = ", ".join(sorted(m.__name__ for m in app.get_models())) or "none"
        raise ImproperlyConfigured(
            f"RELAYCACHE['MODELS'] names {name!r}, which is not a model of {app_label!r} "
            f"(its models: {known})") from None
    return str(model._meta.label_lower)


def _parse_entry(where: str, entry: object) -> ModelRule:
    if entry is None:
        entry = {}
    if not isinstance(entry, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict of options {list(ENTRY_KEYS)}, "
                                   f"got {entry!r}")
    unknown = set(entry) - set(ENTRY_KEYS)
    if unknown:
        raise ImproperlyConfigured(f"{where} has unknown keys {sorted(map(str, unknown))}; "
                                   f"known: {list(ENTRY_KEYS)}")
    ttl = entry.get("TTL")
    try:
        check_ttl(ttl)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{where}['TTL']: {exc}") from None
    operations = entry.get("OPERATIONS", OPERATIONS)
    if isinstance(operations, str) or not isinstance(operations, Iterable):
        raise ImproperlyConfigured(
            f"{where}['OPERATIONS'] must be a list of {list(OPERATIONS)}, got {operations!r}"
            + (f" (write [{operations!r}])" if isinstance(operations, str) else ""))
    operations = list(operations)
    wrong = [op for op in operations if op not in OPERATIONS]
    if wrong:
        raise ImproperlyConfigured(f"{where}['OPERATIONS'] has unknown operations {wrong}; "
                                   f"known: {list(OPERATIONS)}")
    singleflight = entry.get("SINGLEFLIGHT", False)
    if not isinstance(singleflight, bool):
        raise ImproperlyConfigured(f"{where}['SINGLEFLIGHT'] must be True or False, "
                                   f"got {singleflight!r}")
    options = CacheOptions(ttl=ttl, singleflight=singleflight, automatic=True)
    return ModelRule(options=options, operations=frozenset(operations))


def rule_for(model: type[Model]) -> ModelRule | None:
    """The most specific entry naming ``model``: the model, then (for a proxy) its
    concrete model, then its app, then ``"*"``."""
    meta = model._meta
    concrete = (meta.concrete_model or model)._meta
    for key in (meta.label_lower, concrete.label_lower, meta.app_label, concrete.app_label,
                "*"):
        rule = _rules.get(key)
        if rule is not None:
            return rule
    return None


def _per_operation(model: type[Model]) -> dict[str, CacheOptions] | None:
    try:
        return _resolved[model]
    except KeyError:
        rule = rule_for(model)
        found = None if rule is None else {
            op: rule.options if op in rule.operations else OFF for op in OPERATIONS}
        _resolved[model] = found
        return found


def options_for(model: type[Model], operation: str) -> CacheOptions:
    """The options ``operation`` on ``model`` runs with now (:data:`OFF`: uncached)."""
    per_operation = _per_operation(model)
    return OFF if per_operation is None else per_operation[operation]


def is_named(model: type[Model]) -> bool:
    """Whether an entry of the setting names ``model`` now (even with no operation)."""
    return _per_operation(model) is not None


def cached_models() -> list[type[Model]]:
    """Installed models the setting caches some operation of."""
    from django.apps import apps

    return [model for model in apps.get_models()
            if any(options_for(model, op).enabled for op in OPERATIONS)]


def configure(rules: dict[str, ModelRule]) -> None:
    """Apply checked rules (:func:`parse_models`): the managers of every model they
    name are made automatic (so ``Model.objects.cached()`` works on them too); those
    already made stay so and follow the new rules."""
    global _rules, _resolved
    # Rebound, not emptied and refilled: a concurrent read sees the old rules or the new.
    _rules, _resolved = dict(rules), {}
    if not rules:
        return
    from django.apps import apps

    swapped = False
    for model in apps.get_models():
        if rule_for(model) is not None:  # also with no operation: it gets cached()
            swapped |= _install(model)
    if swapped:
        _forget_related_manager_classes()


def _install(model: type[Model]) -> bool:
    """Swap the class of every manager ``model`` reads through, including the ones its
    ``_meta`` copies again from its bases' whenever Django expires its caches."""
    found = [manager for base in model.__mro__
             if isinstance(meta := base.__dict__.get("_meta"), type(model._meta))
             for manager in meta.local_managers]
    found.extend(model._meta.managers)
    swapped = False
    for manager in found:
        if not isinstance(manager, AutomaticManagerMixin):
            manager.__class__ = automatic_manager_class(type(manager))
            swapped = True
    return swapped


def _forget_related_manager_classes() -> None:
    """Related manager classes are derived from the related model's default manager
    class when a relation is first used, and kept on its descriptor: forget them, so
    they are derived again from the swapped classes."""
    from django.apps import apps

    for model in apps.get_models(include_auto_created=True):
        for attribute in vars(model).values():
            state = getattr(attribute, "__dict__", None)
            if isinstance(state, dict):  # a descriptor instance, not a class
                state.pop("related_manager_cls", None)


class AutomaticQuerySetMixin(CachedQuerySetMixin):
    """A model's queryset class, made automatic: each operation runs with the options
    the setting gives it, unless ``cached()`` or ``nocache()`` chose."""

    relaycache_base: type[models.QuerySet[Any, Any]]
    """The queryset class this one was made from."""

    def _automatic(self, operation: str) -> Self:
        """This queryset, or a copy, with the options ``operation`` runs with."""
        if explicit_options(self.query) is not None:
            return self
        chosen = options_for(self.model, operation)
        if chosen == getattr(self.query, "relaycache_options", None):
            return self
        return self._with_cache_options(chosen)

    def _automatic_start(self) -> Self:
        """A manager's new queryset: cached for iteration as the setting says, or, for
        a model it names, with the options of the cached() queryset whose prefetch
        asked for it. A model it does not name (any longer) is left as Django's."""
        if explicit_options(self.query) is None:
            inherited = _prefetch_options.get()
            self._set_cache_options(inherited if inherited is not None and is_named(self.model)
                                    else options_for(self.model, "fetch"))
        return self

    def _follows_cached_parent(self) -> bool:
        # A Prefetch queryset under a cached() one: as before the swap for the model's
        # own cached querysets, and for any model the setting names.
        return issubclass(self.relaycache_base, CachedQuerySetMixin) or is_named(self.model)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return super(AutomaticQuerySetMixin, self._automatic("get")).get(*args, **kwargs)

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        return super(AutomaticQuerySetMixin, self._automatic("count")).count()

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        return super(AutomaticQuerySetMixin, self._automatic("exists")).exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super(AutomaticQuerySetMixin, self._automatic("aggregate")).aggregate(
            *args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # This class is made at run time: pickle it as the one it was made from, so it
        # loads in any process (QuerySet.__getstate__ evaluates it, as for Django's).
        return _unpickle_queryset, (self.relaycache_base,), self.__getstate__()


class AutomaticManagerMixin(_ManagerBase):
    """A model's manager class, made automatic; it keeps the original's name and
    module and compares equal to it, which is what migrations look at."""

    relaycache_original: type[models.Manager[Any]]

    def get_queryset(self) -> models.QuerySet[Any, Any]:
        queryset = super().get_queryset()
        if not isinstance(queryset, models.QuerySet):
            return queryset  # a manager of another kind: left as it is
        if not isinstance(queryset, AutomaticQuerySetMixin):
            queryset.__class__ = automatic_queryset_class(type(queryset))
        return cast(AutomaticQuerySetMixin, queryset)._automatic_start()

    def cached(self, *args: Any, **kwargs: Any) -> models.QuerySet[Any, Any]:
        """``Model.objects.cached(...)``, as on a ``CachedManager``."""
        return cast(AutomaticQuerySetMixin, self.get_queryset()).cached(*args, **kwargs)

    def nocache(self) -> models.QuerySet[Any, Any]:
        """``Model.objects.nocache()``: this queryset always reads the database."""
        return cast(AutomaticQuerySetMixin, self.get_queryset()).nocache()

    def __eq__(self, other: object) -> bool:
        # BaseManager.__eq__ wants other to be an instance of self's class; the
        # migration state's managers are instances of the original.
        # (_constructor_args: set by BaseManager.__new__, not declared by django-stubs)
        return (isinstance(other, self.relaycache_original)
                and getattr(self, "_constructor_args", None)
                == getattr(other, "_constructor_args", None))

    def __hash__(self) -> int:
        return id(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Made at run time under the original's name, which pickle would resolve to
        # the original: pickle it as made from the original, like the queryset. (A
        # class made from this one, such as a related manager, reduces as usual.)
        if type(self) is not _manager_classes.get(self.relaycache_original):
            return super().__reduce_ex__(protocol)
        return _unpickle_manager, (self.relaycache_original,), self.__dict__


_queryset_classes: dict[type, type[AutomaticQuerySetMixin]] = {}
_manager_classes: dict[type, type[AutomaticManagerMixin]] = {}


def automatic_queryset_class(base: type[models.QuerySet[Any, Any]]
                             ) -> type[AutomaticQuerySetMixin]:
    cls = _queryset_classes.get(base)
    if cls is None:
        cls = _queryset_classes[base] = cast(
            "type[AutomaticQuerySetMixin]",
            type(base.__name__, (AutomaticQuerySetMixin, base),
                 {"relaycache_base": base, "__module__": __name__,
                  "__qualname__": base.__qualname__}))
    return cls


def automatic_manager_class(base: type[models.Manager[Any]]) -> type[AutomaticManagerMixin]:
    cls = _manager_classes.get(base)
    if cls is None:
        # The original's name and module: Manager.deconstruct() finds the class by
        # them, so migrations name the original.
        cls = _manager_classes[base] = cast(
            "type[AutomaticManagerMixin]",
            type(base.__name__, (AutomaticManagerMixin, base),
                 {"relaycache_original": base, "__module__": base.__module__,
                  "__qualname__": base.__qualname__}))
    return cls


def _unpickle_queryset(base: type[models.QuerySet[Any, Any]]) -> AutomaticQuerySetMixin:
    cls = automatic_queryset_class(base)
    return cls.__new__(cls)


def _unpickle_manager(base: type[models.Manager[Any]]) -> AutomaticManagerMixin:
    cls = automatic_manager_class(base)
    return cls.__new__(cls)
