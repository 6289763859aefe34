"""``@cache`` and ``invalidate()``: tag-aware caching of any function's result."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast, overload

from ..backends.base import BaseCache
from .keys import KeyBuilder, check_key, check_tags, check_ttl, tags_problem
from .proxy import DefaultBackend, backend_or_default

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

TagsSpec = Iterable[str] | Callable[..., Iterable[str]] | None
KeySpec = Callable[..., str] | None
BackendSpec = BaseCache | DefaultBackend | None

_DEFAULT_KEYS = KeyBuilder()


def _check_seconds(value: float | None, name: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be positive, finite seconds or None, got {value!r}")
    return value


def _argument_caller(spec: Callable[..., R], func_sig: inspect.Signature
                     ) -> Callable[[inspect.BoundArguments], R]:
    """Call ``spec`` with the decorated function's arguments, as far as it takes them.

    Parameters are matched by name when the callable uses the function's names (so it
    may leave out ``self`` or defaulted arguments), by position otherwise; a
    zero-argument callable gets nothing.
    """
    params = list(inspect.signature(spec).parameters.values())
    if not params:
        return lambda bound: spec()
    kinds = {p.kind for p in params}
    if not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} and all(
        p.name in func_sig.parameters and p.kind is not p.POSITIONAL_ONLY for p in params
    ):
        names = [p.name for p in params]
        return lambda bound: spec(**{n: bound.arguments[n] for n in names if n in bound.arguments})
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return lambda bound: spec(*bound.args, **bound.kwargs)
    count = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return lambda bound: spec(*bound.args[:count])


class CachedFunction:
    """What ``@cache`` returns: the function, plus ``cache_key()`` and ``delete()``.

    A descriptor, so that on a method ``obj.method.cache_key(x)`` addresses the entry of
    ``obj.method(x)`` (and ``Class.method.cache_key(obj, x)`` as well).
    """

    __qualname__: str  # copied from the function by functools.update_wrapper()

    def __init__(self, func: Callable[..., Any], ttl: float | None, backend: BackendSpec,
                 tags: TagsSpec, key: KeySpec, singleflight: bool, *,
                 key_builder: KeyBuilder | None = None, namespace: str | None = None,
                 lease_ttl: float | None = None, lease_wait: float | None = None) -> None:
        if backend is not None and not isinstance(backend, (BaseCache, DefaultBackend)):
            raise TypeError(f"backend must be a relaycache backend, got {backend!r}")
        if key is not None and not callable(key):
            raise TypeError("key must be a callable taking the function's arguments")
        if key_builder is not None and not callable(getattr(key_builder, "build", None)):
            raise TypeError(f"key_builder must have build(func, args, kwargs, namespace), "
                            f"got {key_builder!r}")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str or None, got {namespace!r}")
        if tags is not None and not callable(tags):
            problem = tags_problem(tags)
            if problem is not None:
                raise TypeError("@cache(tags=...) takes a list of tag strings or a callable "
                                f"taking the function's arguments and returning one, got {problem}")
        functools.update_wrapper(self, func)
        self.func = func
        self.signature = inspect.signature(func)
        self.ttl = check_ttl(ttl)
        self.explicit_backend = None if isinstance(backend, DefaultBackend) else backend
        self.singleflight = singleflight
        self.lease_ttl = _check_seconds(lease_ttl, "dist_lock_ttl")
        self.lease_wait = _check_seconds(lease_wait, "dist_lock_timeout")
        self.key_builder = key_builder or _DEFAULT_KEYS
        self.namespace = namespace
        # A builder that keeps KeyBuilder.build is given the bound call (bound once for
        # the key and the tags); one that replaces it gets what build() documents.
        self._bound_key = (self.key_builder.bound_key
                           if isinstance(self.key_builder, KeyBuilder)
                           and type(self.key_builder).build is KeyBuilder.build else None)
        self._key_of = _argument_caller(key, self.signature) if key is not None else None
        if callable(tags):
            self._tags_of: Callable[[inspect.BoundArguments], Iterable[str]] = _argument_caller(
                tags, self.signature)
        else:
            fixed = check_tags(tags or ())
            self._tags_of = lambda bound: fixed

    @property
    def backend(self) -> BaseCache:
        return backend_or_default(self.explicit_backend)

    def resolve(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[str, Iterable[str]]:
        """The key and tags of one call; the backend validates the tags (and remembers
        the lists it has seen, so a hit does not check them again)."""
        bound = self._bind(args, kwargs)
        return self._key(bound), self._tags_of(bound)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound

    def _key(self, bound: inspect.BoundArguments) -> str:
        if self._key_of is not None:
            return check_key(self._key_of(bound))
        if self._bound_key is not None:
            return self._bound_key(self.func, bound, self.namespace)
        return check_key(self.key_builder.build(self.func, bound.args, bound.kwargs,
                                                self.namespace))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key, tags = self.resolve(args, kwargs)
        return self.backend.get_or_set(key, lambda: self.func(*args, **kwargs), ttl=self.ttl,
                                       tags=tags, singleflight=self.singleflight,
                                       lease_ttl=self.lease_ttl, lease_wait=self.lease_wait)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """The call of an ``async def`` function: awaits the backend's async path."""
        key, tags = self.resolve(args, kwargs)
        return await self.backend.aget_or_set(
            key, lambda: self.func(*args, **kwargs), ttl=self.ttl, tags=tags,
            singleflight=self.singleflight, lease_ttl=self.lease_ttl,
            lease_wait=self.lease_wait)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The key the result of this call is cached under."""
        return self._key(self._bind(args, kwargs))

    def delete(self, *args: Any, **kwargs: Any) -> None:
        """Drop the cached result of this call only."""
        self.backend.delete(self.cache_key(*args, **kwargs))

    async def adelete(self, *args: Any, **kwargs: Any) -> None:
        """Async :meth:`delete`."""
        await self.backend.adelete(self.cache_key(*args, **kwargs))

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _Bound: ...

    def __get__(self, instance: object, owner: type | None = None) -> Self | _Bound:
        return self if instance is None else _Bound(self, instance)

    def __repr__(self) -> str:
        return f"<cached function {self.__qualname__}>"


class _Bound:
    """A cached function bound to an instance (or, for a classmethod, a class)."""

    def __init__(self, function: CachedFunction, target: object) -> None:
        self.__func__ = function
        self.__self__ = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self.__func__.cache_key(self.__self__, *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> None:
        self.__func__.delete(self.__self__, *args, **kwargs)

    async def adelete(self, *args: Any, **kwargs: Any) -> None:
        await self.__func__.adelete(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__func__, name)


if TYPE_CHECKING:
    _ClassMethod = classmethod[Any, ..., Any]  # generic in the stubs only
else:
    _ClassMethod = classmethod


class _CachedClassMethod(_ClassMethod):
    """``@cache`` applied over ``@classmethod``: still a classmethod, binding the class
    itself, whatever the Python version does with descriptors inside ``classmethod``."""

    __func__: CachedFunction

    def __get__(self, instance: object, owner: type | None = None) -> _Bound:
        # mypy applies CachedFunction.__get__ to the attribute, but classmethod stores
        # the CachedFunction itself and returns it unbound.
        function = cast(CachedFunction, self.__func__)
        return _Bound(function, owner if owner is not None else type(instance))


@overload
def cache(func: F, /) -> F: ...


@overload
def cache(ttl: float | None = ..., /, *, key: KeySpec = ..., namespace: str | None = ...,
          backend: BackendSpec = ..., key_builder: KeyBuilder | None = ...,
          tags: TagsSpec = ..., distributed_singleflight: bool = ...,
          dist_lock_ttl: float | None = ..., dist_lock_timeout: float | None = ...
          ) -> Callable[[F], F]: ...


@overload
def cache(*, ttl: float | None = ..., key: KeySpec = ..., namespace: str | None = ...,
          backend: BackendSpec = ..., key_builder: KeyBuilder | None = ...,
          tags: TagsSpec = ..., distributed_singleflight: bool = ...,
          dist_lock_ttl: float | None = ..., dist_lock_timeout: float | None = ...
          ) -> Callable[[F], F]: ...


def cache(func: Any = None, /, *, ttl: float | None = None, key: KeySpec = None,
          namespace: str | None = None, backend: BackendSpec = None,
          key_builder: KeyBuilder | None = None, tags: TagsSpec = None,
          distributed_singleflight: bool = False, dist_lock_ttl: float | None = None,
          dist_lock_timeout: float | None = None) -> Any:
    """Cache a function's result under tags; works on sync and ``async def`` functions.

    ``@cache``, ``@cache(300)`` and ``@cache(ttl=300, ...)`` all work (the relaycache
    0.1 library's signature: ``ttl`` first).

    :param ttl: seconds to keep a result (``None``: the backend's ``default_ttl``).
    :param key: a callable taking the function's arguments and returning the key;
        by default ``key_builder`` derives a stable one from module, qualified name
        and arguments.
    :param namespace: a part of every derived key (after ``key_builder``'s prefix):
        bump it to start afresh. Not applied to ``key=`` keys.
    :param backend: the backend (``None`` or ``default_backend``: the default backend
        at call time).
    :param key_builder: a :class:`~relaycache.KeyBuilder` (``prefix``, ``namespace``),
        or any object with its ``build(func, args, kwargs, namespace)``.
    :param tags: a list of tags, or a callable taking the function's arguments and
        returning one; :func:`invalidate` on any of them drops the result.
    :param distributed_singleflight: concurrent misses of one key in every process
        sharing the backend compute once (in-process misses always do).
    :param dist_lock_ttl: seconds the computing process holds the others back (its
        lease expires then if it died); ``None``: the backend's ``lease_ttl`` (30 s).
    :param dist_lock_timeout: seconds a waiting process waits for that computation
        before computing itself; ``None``: twice ``dist_lock_ttl``.

    ``None`` results are cached. The result has ``cache_key(*args, **kwargs)`` and
    ``delete(*args, **kwargs)`` to address the entry of one call.
    """
    if func is not None and not callable(func) and not isinstance(func, (staticmethod,
                                                                          classmethod)):
        if ttl is not None:
            raise TypeError("cache() got ttl both as its first argument and as ttl=")
        ttl, func = func, None

    def decorate(target: Any) -> Any:
        if isinstance(target, staticmethod):
            return staticmethod(decorate(target.__func__))
        if isinstance(target, classmethod):
            return _CachedClassMethod(decorate(target.__func__))
        cached = CachedFunction(target, ttl, backend, tags, key, distributed_singleflight,
                                key_builder=key_builder, namespace=namespace,
                                lease_ttl=dist_lock_ttl, lease_wait=dist_lock_timeout)
        if not inspect.iscoroutinefunction(target):
            return cached

        # A real coroutine function, so inspect.iscoroutinefunction() still says so (an
        # object cannot on Python 3.11); on methods, pass the instance to its helpers.
        @functools.wraps(target)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await cached.acall(*args, **kwargs)

        # Function attributes, which mypy does not model: set them in the function's dict.
        vars(wrapper).update(cache_key=cached.cache_key, delete=cached.delete,
                             adelete=cached.adelete)
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


def _tag_list(tags: Iterable[str], name: str) -> Iterable[str]:
    problem = tags_problem(tags)
    if problem is not None:
        raise TypeError(f"{name}(tags=...) takes a list of tag strings, got {problem}")
    return tags


def invalidate(tags: Iterable[str], backend: BackendSpec = None) -> None:
    """Drop every cached result under any of ``tags`` (in every process)."""
    backend_or_default(backend).invalidate(_tag_list(tags, "invalidate"))


async def ainvalidate(tags: Iterable[str], backend: BackendSpec = None) -> None:
    """Async :func:`invalidate`."""
    await backend_or_default(backend).ainvalidate(_tag_list(tags, "ainvalidate"))
