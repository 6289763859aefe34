from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from relaycache import invalidate


class Command(BaseCommand):
    help = "Clear book cache (the integration guide's command)"

    def add_arguments(self, parser):
        parser.add_argument("--tag", type=str, help="Clear cache by specific tag")
        parser.add_argument("--all-books", action="store_true", help="Clear all book cache")

    def handle(self, *args, **options):
        backend = settings.CACHE_BACKEND
        if options["all_books"]:
            invalidate(tags=["books"], backend=backend)
            self.stdout.write(self.style.SUCCESS("All book cache cleared"))
        elif options["tag"]:
            invalidate(tags=[options["tag"]], backend=backend)
            self.stdout.write(self.style.SUCCESS(f'Cache with tag "{options["tag"]}" cleared'))
        else:
            raise CommandError("Specify --tag or --all-books")
