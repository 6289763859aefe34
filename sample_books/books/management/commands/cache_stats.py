from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Cache usage statistics of this process's backend (and Redis memory, if any)"

    def handle(self, *args, **options):
        backend = settings.CACHE_BACKEND
        for name, value in backend.stats.snapshot().items():
            self.stdout.write(f"{name}: {value}")
        if hasattr(backend, "redis_client"):
            info = backend.redis_client.info("memory")
            self.stdout.write(f"Redis memory used: {info.get('used_memory_human')}")
