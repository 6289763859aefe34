"""The Django-free core: codec, keys, stats, breaker, compression, events, the default
backend and the ``@cache`` decorator."""
