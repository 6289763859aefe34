"""Type fidelity: a hit returns the same values of the same types as the uncached ORM,
for every field type, and results handed out are the caller's to mutate."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import (
    Avg,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Sum,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, TruncDate, TruncHour
from django.utils import timezone

from tests.orm.support import ORM_SCENARIO, read, snap
from tests.ormapp.models import AllTypes, Book, Label

pytestmark = ORM_SCENARIO

FIELDS = [f.attname for f in AllTypes._meta.concrete_fields]


def rows():
    return AllTypes.objects.order_by("id")


def test_every_field_round_trips(scenario, all_types):
    hit = scenario.warm(read(rows))
    truth = list(rows())
    assert [o.pk for o in hit] == [all_types.full.pk, all_types.empty.pk, all_types.extreme.pk]
    for cached, uncached in zip(hit, truth, strict=True):
        for name in FIELDS:
            a, b = getattr(cached, name), getattr(uncached, name)
            assert type(a) is type(b), name
            assert snap(a) == snap(b), name
        assert (cached._state.db, cached._state.adding) == ("default", False)
        assert (uncached._state.db, uncached._state.adding) == ("default", False)
    full = hit[0]
    assert full.moment == dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC)
    assert full.moment.utcoffset() == dt.timedelta(0)
    assert type(full.amount) is Decimal and str(full.amount) == "12345678.1230"
    assert full.ident == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert type(full.ident) is uuid.UUID
    assert bytes(full.blob) == b"\x00\x01binary\xff"
    assert full.span == dt.timedelta(days=3, seconds=4, microseconds=5)
    assert full.data == {"a": {"b": [1, 2.5, None, True, "x"]}, "n": None}
    assert full.ip == "2001:db8::1" and full.big == 2**62 + 7 and full.flag is True
    assert type(full.clock) is dt.time and type(full.day) is dt.date
    extreme = hit[2]
    assert extreme.span == dt.timedelta(days=-1, microseconds=1)
    assert extreme.big == -(2**63) and extreme.amount == Decimal("-0.0001")
    assert extreme.data[0] == {"~t": [1, 2]} and extreme.data[1] == {"~dt": "2020-01-01"}
    empty = hit[1]
    assert all(getattr(empty, n) is None for n in
               ("big", "flag", "moment", "span", "amount", "blob", "data", "ip"))


def test_every_field_after_a_write(scenario, all_types):
    def write():
        o = all_types.empty
        o.big, o.small, o.flag, o.char = 1, 2, False, "x"
        o.day, o.clock = dt.date(2000, 1, 1), dt.time(1, 2, 3)
        o.moment = dt.datetime(2000, 1, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo"))
        o.span, o.amount, o.ratio = dt.timedelta(microseconds=1), Decimal("1.5"), 2.0
        o.ident, o.blob, o.data = uuid.uuid4(), b"new", ["list", {"k": [None]}]
        o.ip = "::ffff:10.0.0.1"
        o.save()

    scenario.check_write(write, read(rows), read(lambda: AllTypes.objects.values(*FIELDS)
                                                  .order_by("id")))


def test_values_and_values_list_types(scenario, all_types):
    scenario.check_write(
        lambda: AllTypes.objects.filter(pk=all_types.full.pk).update(
            amount=F("amount") * 2, span=F("span") + dt.timedelta(days=1)),
        read(lambda: AllTypes.objects.values(*FIELDS).order_by("id")),
        read(lambda: AllTypes.objects.values_list(*FIELDS).order_by("id")),
        read(lambda: AllTypes.objects.values_list(*FIELDS, named=True).order_by("id")),
        read(lambda: AllTypes.objects.order_by("id").values_list("amount", flat=True)),
    )


def test_json_shapes_and_key_transforms(scenario, all_types):
    for data in ([1, "a", None, [2, {"x": False}]], "plain string", 3.5, True,
                 {"~m": [[1, 2]], "~x:y": None, "": {"": ""}}):
        AllTypes.objects.create(data=data)
    scenario.check_write(
        lambda: AllTypes.objects.filter(pk=all_types.full.pk).update(
            data={"a": {"b": ["changed"]}, "n": 0}),
        read(lambda: AllTypes.objects.values_list("data", flat=True).order_by("id")),
        read(lambda: AllTypes.objects.filter(data__a__b__0="changed")),
        read(lambda: AllTypes.objects.values("data__a__b", "data__n").order_by("id")),
        read(lambda: AllTypes.objects.annotate(n=KT("data__n")).filter(data__has_key="a")
             .values_list("n", flat=True)),
    )


def test_float_infinity_and_special_values(scenario, all_types):
    scenario.check_write(
        lambda: AllTypes.objects.filter(pk=all_types.full.pk).update(ratio=float("inf")),
        read(lambda: AllTypes.objects.values_list("ratio", flat=True).order_by("id")),
    )
    scenario.check_write(
        lambda: AllTypes.objects.filter(pk=all_types.extreme.pk).update(ratio=float("-inf")),
        read(rows),
    )


def test_annotation_and_aggregate_types(scenario, all_types):
    def aggregates(qs):
        return qs.aggregate(total=Sum("amount"), mean=Avg("small"), latest=Max("moment"),
                            first_day=Min("day"), spans=Sum("span"), n=Count("ident"),
                            biggest=Max("big"))

    afters = scenario.check_write(
        lambda: AllTypes.objects.create(amount=Decimal("0.0005"), span=dt.timedelta(hours=1),
                                        moment=dt.datetime(2099, 1, 1, tzinfo=dt.UTC)),
        read(lambda: AllTypes.objects.all(), aggregates),
        read(lambda: AllTypes.objects.annotate(
            as_text=Cast("small", output_field=AllTypes._meta.get_field("char")),
            const=Value(Decimal("1.10")), day_of=TruncDate("moment"),
            hour=TruncHour("moment"),
            doubled=ExpressionWrapper(F("span") * 2, output_field=DurationField()))
            .order_by("id")),
    )
    assert type(afters[0]["total"]) is Decimal and type(afters[0]["spans"]) is dt.timedelta
    assert afters[0]["latest"].tzinfo is not None


def test_active_timezone_is_part_of_the_key(scenario, all_types):
    """The same queryset under two active time zones returns two different results;
    each is cached under its own key."""
    def build():
        return AllTypes.objects.filter(moment__isnull=False).annotate(
            local_day=TruncDate("moment")).order_by("id").values_list("local_day", flat=True)

    utc = scenario.warm(read(build))
    with timezone.override(ZoneInfo("Asia/Tokyo")):
        tokyo = scenario.warm(read(build))
        days = scenario.warm(read(lambda: AllTypes.objects.datetimes("moment", "day")))
        assert all(d.utcoffset() == dt.timedelta(hours=9) for d in days)
    assert utc != tokyo
    assert scenario.hit(read(build)) == utc


def test_state_and_select_related_types(scenario, shop):
    hit = scenario.warm(read(lambda: Book.objects.select_related("main_publisher")
                             .order_by("id")))
    for b in hit:
        assert b._state.adding is False and b._state.db == "default"
        if b.main_publisher is not None:
            assert b.main_publisher._state.adding is False
            assert b.main_publisher._state.db == "default"
    assert type(hit[0].price) is Decimal and type(hit[0].publication_date) is dt.date


def test_mutating_results_does_not_change_the_cache(scenario, all_types):
    def build():
        return AllTypes.objects.order_by("id")

    first = list(build().cached())
    first[0].data["a"]["b"].append("mutated")
    first[0].char = "mutated"
    first.pop()
    again = scenario.hit(read(build))
    assert again[0].data == {"a": {"b": [1, 2.5, None, True, "x"]}, "n": None}
    assert again[0].char == "café ☕" and len(again) == 3
    values = list(AllTypes.objects.cached().values("data", "char").order_by("id"))
    values[0]["data"]["n"] = "mutated"
    values[0].clear()
    assert scenario.hit(read(lambda: AllTypes.objects.values("data", "char")
                             .order_by("id")))[0]["data"]["n"] is None


def test_mutating_instances_and_saving_them(scenario, shop):
    """A hit's instance is a normal instance: modifying and saving it writes and
    invalidates like any other."""
    titles = read(lambda: Label.objects.order_by("id").values_list("name", flat=True))
    scenario.warm(titles)
    label = Label.objects.cached().get(pk=shop.new.pk)
    assert scenario.hit(read(lambda: Label.objects.all(),
                             lambda qs: qs.get(pk=shop.new.pk))) == label
    label.name = "renamed"
    label.save()
    assert scenario.fresh(titles)[2] == "renamed"
