"""The Django app: ``INSTALLED_APPS += ["relaycache"]``. All wiring happens here."""

from django.apps import AppConfig
from django.core.signals import setting_changed


class RelayCacheConfig(AppConfig):
    name = "relaycache"
    verbose_name = "RelayCache"

    def ready(self) -> None:
        from . import checks, http, settings, signals
        from .orm import invalidation, memo

        checks.register()
        signals.install()
        http.register_response_type()
        memo.install()
        settings.apply_settings()
        setting_changed.connect(settings.reload, dispatch_uid="relaycache.settings")
        invalidation.install_everywhere()
