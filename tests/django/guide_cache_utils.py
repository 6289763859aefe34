# ruff: noqa  (kept byte for byte as the guide prints it)
"""The integration guide's ``cache_view`` helper (utils/cache_utils.py), verbatim but for
``custom_cache`` read as ``relaycache``: it caches the ``HttpResponse`` a view returns
through ``@cache``, which works because ``relaycache.http`` registers the type."""

# utils/cache_utils.py
from functools import wraps
from django.conf import settings
from relaycache import cache

def cache_view(ttl=3600, tags=None, key_func=None):
    """Decorator for caching Django views"""
    def decorator(view_func):
        @wraps(view_func)
        def wrapper(request, *args, **kwargs):
            # Generate key based on URL and parameters
            if key_func:
                cache_key = key_func(request, *args, **kwargs)
            else:
                cache_key = f"view:{request.path}:{hash(str(sorted(request.GET.items())))}"
            
            # Generate tags
            if callable(tags):
                cache_tags = tags(request, *args, **kwargs)
            else:
                cache_tags = tags or []
            
            @cache(
                ttl=ttl,
                backend=settings.CACHE_BACKEND,
                tags=cache_tags,
                key=lambda: cache_key
            )
            def cached_view():
                return view_func(request, *args, **kwargs)
            
            return cached_view()
        return wrapper
    return decorator
