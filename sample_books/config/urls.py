from books import views
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("", views.genre_index, name="genre_index"),
    path("genre/<slug:slug>/", views.book_list_view, name="book_list"),
    path("book/<int:pk>/", views.book_detail, name="book_detail"),
    path("admin/clear-cache/", views.clear_cache_api, name="clear_cache_api"),
    path("admin/", admin.site.urls),
]
