from django.contrib import admin

from .models import Book, Genre, Publisher


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "publication_date", "is_featured"]
    list_filter = ["is_featured"]
    search_fields = ["title", "author", "isbn"]


admin.site.register([Genre, Publisher])
