"""A process of another deployment: the test settings, whose ``default`` database is
``RELAYCACHE_TEST_DATABASE_URL``, caching on the Redis server and key prefix it is given.

    python -m tests.tenants.worker REDIS_URL PREFIX setup|read|write [LABEL...]

``setup`` creates the tables and the labels named, ``write`` adds the labels named;
then every command prints the label names read through the cache (JSON).
"""

from __future__ import annotations

import json
import sys

import django


def main() -> None:
    redis_url, prefix, command, *names = sys.argv[1:]
    django.setup()
    from django.core.management import call_command

    from relaycache import RedisCache
    from relaycache.core.defaults import set_default_backend
    from tests.ormapp.models import Label

    set_default_backend(RedisCache.from_url(redis_url, value_prefix=prefix,
                                            meta_prefix=prefix + "meta:"))
    if command == "setup":
        call_command("migrate", run_syncdb=True, verbosity=0)
    for name in names:
        Label.objects.create(name=name)
    cached = Label.objects.cached().order_by("id").values_list("name", flat=True)
    print(json.dumps(list(cached)))


if __name__ == "__main__":
    main()
