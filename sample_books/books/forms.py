"""The book page's edit form (a demo: no login, see views.book_detail)."""

from django import forms

from .models import Book


class BookForm(forms.ModelForm):
    class Meta:
        model = Book
        fields = ["title", "author", "publication_date", "is_featured"]
        widgets = {"publication_date": forms.DateInput(attrs={"type": "date"},
                                                       format="%Y-%m-%d")}
        labels = {"is_featured": "Featured"}
