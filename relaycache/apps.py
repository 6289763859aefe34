"""The Django app: ``INSTALLED_APPS += ["relaycache"]``."""

from django.apps import AppConfig


class RelayCacheConfig(AppConfig):
    name = "relaycache"
    verbose_name = "RelayCache"

    def ready(self) -> None:
        from . import checks, signals
        from . import views as _views  # noqa: F401  (registers HttpResponse in the codec)
        from .conf import apply_settings
        from .orm.invalidation import install_everywhere

        checks.register()
        signals.install()
        apply_settings()
        install_everywhere()
