"""URLconf of the Django integration tests: ``@pytest.mark.urls("tests.django.urls")``."""

from django.urls import path

from tests.django import views

urlpatterns = [
    path("page/", views.page),
    path("bare/", views.bare),
    path("tagged/<slug:slug>/", views.tagged),
    path("status/<int:code>/", views.status),
    path("json/", views.json_view),
    path("cookie/", views.cookie),
    path("streaming/", views.streaming),
    path("file/", views.file),
    path("private/", views.private),
    path("no-store/", views.no_store),
    path("public/", views.public),
    path("vary-language/", views.vary_language),
    path("vary-star/", views.vary_star),
    path("declared/", views.declared),
    path("template/", views.template),
    path("csrf/", views.csrf),
    path("head-aware/", views.head_aware),
    path("books/", views.books),
    path("cbv/<str:name>/", views.ClassView.as_view()),
    path("async/", views.async_page),
    path("guide/books/<slug:slug>/", views.book_list_view),
    path("guide/default-key/", views.guide_default_key),
    path("guide/cookie/", views.guide_cookie),
    path("guide/template/", views.guide_template),
    path("guide/streaming/", views.guide_streaming),
]
