"""``cache_info()`` of a queryset that locks rows says why it is not cached, also
outside a transaction, where PostgreSQL's compiler refuses ``select_for_update()``."""

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError

from relaycache.orm.tables import SELECT_FOR_UPDATE
from tests.ormapp.models import Book

pytestmark = pytest.mark.django_db(transaction=True)


def _locking_querysets():
    return [
        Book.objects.cached().select_for_update(),
        Book.objects.cached().filter(
            id__in=Book.objects.select_for_update().values("id")),  # lock in a subquery
    ]


def test_cache_info_of_a_lock_outside_a_transaction_gives_the_reason():
    for queryset in _locking_querysets():
        info = queryset.cache_info()
        assert (info.cached, info.reason) == (False, SELECT_FOR_UPDATE)


def test_cache_info_of_a_lock_inside_a_transaction_gives_the_reason():
    with transaction.atomic():
        for queryset in _locking_querysets():
            info = queryset.cache_info()
            assert (info.cached, info.reason) == (False, SELECT_FOR_UPDATE)


def test_count_of_a_subquery_lock_behaves_as_djangos():
    queryset = _locking_querysets()[1]
    if connection.features.has_select_for_update:  # PostgreSQL: Django's own error
        with pytest.raises(TransactionManagementError):
            queryset.count()
        with pytest.raises(TransactionManagementError):
            queryset.nocache().count()
    else:  # SQLite ignores the lock
        assert queryset.count() == queryset.nocache().count() == 0
    with transaction.atomic():
        assert queryset.count() == 0
