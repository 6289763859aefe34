"""The shared app: tenants, their domains and a shared table (in ``public`` only)."""

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

from relaycache import CachedManager


class Client(TenantMixin):
    name = models.CharField(max_length=50)

    auto_create_schema = True


class Domain(DomainMixin):
    pass


class Plan(models.Model):
    """Read by every tenant through its search_path (``tenant, public``)."""

    name = models.CharField(max_length=50)

    objects = CachedManager()
