"""Two tenants of a django-tenants project read and write through the cache on one
database alias, switched the way django-tenants' middleware switches them.

    RELAYCACHE_TENANTS_DATABASE_URL=... python -m tests.tenants.scenario

The database must be empty. Prints a JSON object: for every step, what the cached read
returned, what the database holds (read uncached) and whether the read was a hit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import django


def main() -> None:
    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings
    from django_tenants.utils import tenant_context

    from relaycache.core.defaults import get_default_backend
    from tests.tenants.customers.models import Client, Plan
    from tests.tenants.notes.models import Note

    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    tenant_a = Client.objects.create(schema_name="tenant_a", name="A")
    tenant_b = Client.objects.create(schema_name="tenant_b", name="B")
    backend = get_default_backend()
    steps: dict[str, Any] = {}

    def observe(step: str, build: Callable[[], Any]) -> None:
        hits = backend.stats.hits
        cached = list(build().cached())
        steps[step] = {"cached": cached, "database": list(build()),
                       "hit": backend.stats.hits > hits}

    def notes() -> Any:
        return Note.objects.order_by("id").values_list("text", flat=True)

    def plans() -> Any:
        return Plan.objects.order_by("id").values_list("name", flat=True)

    for tenant in (tenant_a, tenant_b):
        with tenant_context(tenant):
            Note.objects.create(text=f"{tenant.schema_name} note")
    for round_ in (1, 2):
        for tenant in (tenant_a, tenant_b):
            with tenant_context(tenant):
                observe(f"{tenant.schema_name} notes, round {round_}", notes)

    with tenant_context(tenant_b):
        Note.objects.create(text="tenant_b second note")
        observe("tenant_b notes after its write", notes)
    with tenant_context(tenant_a):
        observe("tenant_a notes after tenant_b's write", notes)
        observe("plans read by tenant_a", plans)
    with tenant_context(tenant_b):
        Plan.objects.create(name="written by tenant_b")
    with tenant_context(tenant_a):
        observe("plans read by tenant_a after tenant_b's write", plans)

    with override_settings(TENANT_LIMIT_SET_CALLS=True):
        for tenant in (tenant_a, tenant_b):
            with tenant_context(tenant):
                observe(f"{tenant.schema_name} notes, search_path set once", notes)

    # A raw SET on a django-tenants connection: django-tenants sets the tenant's
    # search_path again before the next query, unless TENANT_LIMIT_SET_CALLS.
    with tenant_context(tenant_a):
        with connection.cursor() as cursor:
            cursor.execute("SET search_path TO tenant_b, public")
        observe("tenant_a notes after a raw SET", notes)
    with override_settings(TENANT_LIMIT_SET_CALLS=True), tenant_context(tenant_a):
        with connection.cursor() as cursor:
            cursor.execute("SET search_path TO tenant_b, public")
        observe("tenant_a notes after a raw SET, search_path set once", notes)

    backend.clear()
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
