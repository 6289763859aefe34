import random
import sys

import factory.random
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from books.factories import GENRES, BookFactory, GenreFactory, PublisherFactory
from books.models import Book, BookGenre, BookPublisher, Genre, Publisher

BATCH = 1000


class Command(BaseCommand):
    help = "Fill the database with realistic books, genres and publishers (factory-boy)."

    def add_arguments(self, parser):
        parser.add_argument("--books", type=int, default=10_000, help="books to create")
        parser.add_argument("--genres", type=int, default=len(GENRES))
        parser.add_argument("--publishers", type=int, default=200)
        parser.add_argument("--seed", type=int, default=1, help="random seed (repeatable)")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--append", action="store_true",
                            help="add books even if the database has some (existing genres "
                                 "and publishers are reused)")

    def handle(self, *args, books, genres, publishers, seed, no_progress, append, **options):
        if books < 0 or genres < 1 or publishers < 1:
            raise CommandError("--books must be >= 0, --genres and --publishers >= 1")
        if Book.objects.exists() and not append:
            self.stdout.write("The database already has books; pass --append to add more.")
            return
        random.seed(seed)
        factory.random.reseed_random(seed)
        BookFactory.reset_sequence(Book.objects.count())
        GenreFactory.reset_sequence(Genre.objects.count())
        with transaction.atomic():
            genre_objs = list(Genre.objects.all()) or Genre.objects.bulk_create(
                GenreFactory.build_batch(genres))
            publisher_objs = list(Publisher.objects.all()) or Publisher.objects.bulk_create(
                PublisherFactory.build_batch(publishers))
        done = 0
        while done < books:
            size = min(BATCH, books - done)
            with transaction.atomic():
                created = Book.objects.bulk_create(BookFactory.build_batch(size))
                BookGenre.objects.bulk_create(
                    BookGenre(book=b, genre=g) for b in created
                    for g in random.sample(genre_objs, k=min(len(genre_objs),
                                                             random.randint(1, 3))))
                BookPublisher.objects.bulk_create(
                    BookPublisher(book=b, publisher=random.choice(publisher_objs), position=i)
                    for b in created for i in range(random.randint(1, 2)))
            done += size
            if not no_progress:
                self._progress(done, books)
        if not no_progress and books:
            self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(
            f"Seeded {books} books, {len(genre_objs)} genres, {len(publisher_objs)} publishers."))

    def _progress(self, done, total):
        width = 30
        filled = width * done // total
        bar = "#" * filled + "-" * (width - filled)
        self.stdout.write(f"\r[{bar}] {done}/{total} books", ending="")
        sys.stdout.flush()
