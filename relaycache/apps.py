"""The Django app: ``INSTALLED_APPS += ["relaycache"]``."""

from django.apps import AppConfig


class RelayCacheConfig(AppConfig):
    name = "relaycache"
    verbose_name = "RelayCache"

    def ready(self) -> None:
        from .conf import apply_settings
        from .orm.invalidation import install_everywhere

        apply_settings()
        install_everywhere()
