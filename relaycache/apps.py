"""The Django app: ``INSTALLED_APPS += ["relaycache"]``."""

from django.apps import AppConfig


class RelayCacheConfig(AppConfig):
    name = "relaycache"
    verbose_name = "RelayCache"

    def ready(self) -> None:
        from .orm.invalidation import install_everywhere

        install_everywhere()
