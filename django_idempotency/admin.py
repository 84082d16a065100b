"""Read-only inspection of stored idempotency records in the Django admin.

Built for tables of millions of rows, with secrets masked and the list's
filters limited to what it shows (docs/operating.rst, "The admin").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Max, Min, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import encryption
from .conf import conf, store_database
from .models import IdempotencyRecord
from .stores import get_store

MASK = "********"
#: Text bodies longer than this are cut in the detail page.
MAX_SHOWN_BYTES = 64 * 1024
#: Unfiltered lists on PostgreSQL show the planner's row estimate above this.
ESTIMATE_ABOVE = 100_000

Records = QuerySet[IdempotencyRecord]

#: The fields that the list's query string may filter on: what the list shows,
#: and the digest of two shown fields. A filter on stored content would confirm
#: a guess of a masked value, so anything else answers 400.
LOOKUP_FIELDS = frozenset(
    {
        "pk",
        "id",
        "scope",
        "key",
        "digest",
        "method",
        "path",
        "state",
        "response_status",
        "created_at",
        "expires_at",
    }
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _normalise(name: str) -> str:
    return _CAMEL.sub("_", name).replace("-", "_").lower()


def is_masked(name: str, masked: Iterable[str] | None = None) -> bool:
    """Whether a field or header called ``name`` holds a secret: normalised
    (``X-Api-Key``, ``apiKey`` -> ``api_key``), it is a masked name or ends with
    ``_`` and one (``key`` masks ``api_key``, not ``keyboard`` or ``key_id``)."""
    normalised = _normalise(name)
    for field in conf.IDEMPOTENCY_ADMIN_MASKED_FIELDS if masked is None else masked:
        field = _normalise(field)
        if normalised == field or normalised.endswith("_" + field):
            return True
    return False


def mask(value: Any) -> Any:
    """``value`` (parsed JSON) with the values of sensitive fields replaced, recursively."""
    if isinstance(value, dict):
        return {name: MASK if is_masked(str(name)) else mask(item) for name, item in value.items()}
    if isinstance(value, list):
        return [mask(item) for item in value]
    return value


def _size(record: IdempotencyRecord, body: bytes) -> SafeString:
    """What a body that is not text is: its size and content type."""
    types = [value for name, value in record.headers if name.lower() == "content-type"]
    kind = types[0] if types and types[0] else "application/octet-stream"
    return format_html(
        "<em>{}</em>", _("%(size)d bytes of %(type)s") % {"size": len(body), "type": kind}
    )


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts exactly, except an unfiltered list on PostgreSQL: that uses the
    planner's estimate when it is large, so opening the list never scans the table."""

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if isinstance(object_list, QuerySet) and not object_list.query.where:
            connection = connections[object_list.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                        [connection.ops.quote_name(object_list.model._meta.db_table)],
                    )
                    row = cursor.fetchone()
                if row is not None and row[0] > ESTIMATE_ABOVE:
                    estimate: int = row[0]
                    return estimate
        exact: int = super().count
        return exact


class DrillDownQuerySet(QuerySet):  # type: ignore[type-arg]
    """Answers the date drill-down with every period from the first record to the
    last (two index lookups), not Django's DISTINCT over every row in range:
    records that live a day and are purged daily leave no period empty."""

    def datetimes(self, field_name: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        if field_name != "created_at" or kind not in ("year", "month", "day"):
            return super().datetimes(field_name, kind, *args, **kwargs)  # type: ignore[arg-type]
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        first = _truncate(_local(bounds["first"]), kind)
        last = _local(bounds["last"])
        periods = []
        while first <= last:
            periods.append(first)
            step = {"day": 1, "month": 32, "year": 366}[kind]
            first = _truncate(first + timedelta(days=step), kind)
        return periods


def _local(moment: datetime) -> datetime:
    # With USE_TZ = False the database gives naive local times, as Django's
    # own datetimes() does then; localtime() refuses them.
    return timezone.localtime(moment) if settings.USE_TZ else moment


def _truncate(moment: datetime, kind: str) -> datetime:
    moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind != "day":
        moment = moment.replace(day=1, month=1 if kind == "year" else moment.month)
    return timezone.make_aware(moment.replace(tzinfo=None)) if settings.USE_TZ else moment


class StatusClassFilter(admin.SimpleListFilter):
    title = _("response status")
    parameter_name = "status_class"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(f"{n}xx", f"{n}xx") for n in range(1, 6)]

    def queryset(self, request: HttpRequest, queryset: Records) -> Records | None:
        value = self.value()
        if value and re.fullmatch(r"[1-5]xx", value):
            low = int(value[0]) * 100
            queryset = queryset.filter(response_status__gte=low, response_status__lt=low + 100)
        return queryset


class ExpiredFilter(admin.SimpleListFilter):
    title = _("expired")
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: Records) -> Records | None:
        if self.value() == "yes":
            queryset = queryset.filter(expires_at__lte=timezone.now())
        elif self.value() == "no":
            queryset = queryset.filter(expires_at__gt=timezone.now())
        return queryset


def _in_words(moment: datetime, text: Any) -> SafeString:
    """A time as short words, the exact time on hover: narrow list columns."""
    exact = date_format(_local(moment), "DATETIME_FORMAT")
    return format_html('<span title="{}">{}</span>', exact, text)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    # What fits beside the navigation sidebar: times as short text, expiry as
    # words (a boolean icon would show a red cross on every live record).
    list_display = ("key", "scope_link", "request_line", "outcome", "created", "expiry")
    list_filter = ("state", StatusClassFilter, ExpiredFilter)
    # Only indexed columns: sorting millions of rows by anything else is a full sort.
    sortable_by = ("created", "expiry")
    ordering = ("-pk",)
    date_hierarchy = "created_at"
    search_fields = ("key", "path")
    search_help_text = _("An exact idempotency key, or the start of a path (beginning with /).")
    show_full_result_count = False
    if hasattr(admin, "ShowFacets"):  # Django 5.0+: facet counts scan the table
        show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 50
    actions = ("expire_selected",)
    fieldsets = (
        (
            _("Request"),
            {
                "fields": (
                    "key",
                    "scope_link",
                    "request_line",
                    "fingerprint",
                    "state",
                    "created_at",
                    "expires_at",
                    "expired",
                )
            },
        ),
        (_("Stored response"), {"fields": ("response_status", "headers", "body")}),
    )
    readonly_fields = ("scope_link", "request_line", "expired", "headers", "body")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The detail page stays viewable (view permission) but never editable.
        return False

    # Django 4.2 calls this without ``request``, 5.0 and later with it.
    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        """Only :data:`LOOKUP_FIELDS` and the list filters' own parameters: Django's
        check restricts relations only, and would let ``response_body__regex``
        test a guess of a masked secret."""
        if lookup.split(LOOKUP_SEP, 1)[0] in LOOKUP_FIELDS:
            return True
        list_filter = self.get_list_filter(request) if request is not None else self.list_filter
        return any(
            isinstance(item, type)
            and issubclass(item, admin.SimpleListFilter)
            and item.parameter_name == lookup
            for item in list_filter
        )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # Only on GET: an action's POST redirects to a GET that adds it again.
        held = get_store().claims_held() if request.method == "GET" else None
        if held is not None:
            count, oldest = held
            if count:
                message = ngettext(
                    "%(count)d request is running right now (its key is held by a lock, "
                    "not a row), for %(age)s.",
                    "%(count)d requests are running right now (their keys are held by "
                    "locks, not rows), the oldest for %(age)s.",
                    count,
                ) % {"count": count, "age": timesince(oldest) if oldest else "?"}
            else:
                message = str(_("No request is running right now."))
            self.message_user(request, message, messages.INFO)
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> Records:
        # Bodies can be large; the detail page loads its one body when shown.
        queryset: Records = super().get_queryset(request).defer("response_body")
        if self._acts_on_rows(request):
            queryset = queryset.using(store_database())
        return DrillDownQuerySet(
            model=queryset.model, query=queryset.query.chain(), using=queryset.db
        )

    def _acts_on_rows(self, request: HttpRequest) -> bool:
        """Whether the request changes the rows it reads (an action, the delete
        page): those are read where they are written, not on a replica that may
        not have a new row yet."""
        match = request.resolver_match
        opts = self.model._meta
        return request.method == "POST" or (
            match is not None and match.url_name == f"{opts.app_label}_{opts.model_name}_delete"
        )

    def get_search_results(
        self, request: HttpRequest, queryset: Records, search_term: str
    ) -> tuple[Records, bool]:
        # An exact key (indexed) or a path prefix (stops early in the newest-first
        # scan), never "contains", nor stored content (it would confirm a guess
        # of a masked value).
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.startswith("/"):
            return queryset.filter(path__startswith=term), False
        return queryset.filter(key=term), False

    @admin.display(description=_("request"))
    def request_line(self, obj: IdempotencyRecord) -> str:
        return f"{obj.method} {obj.path}"

    @admin.display(description=_("expired"))
    def expired(self, obj: IdempotencyRecord) -> str:
        return str(_("yes") if obj.is_expired else _("no"))

    @admin.display(description=_("status"))
    def outcome(self, obj: IdempotencyRecord) -> str:
        """The stored response's status, or the state while there is none."""
        if obj.response_status is None:
            return str(obj.get_state_display())
        return str(obj.response_status)

    @admin.display(description=_("scope"))
    def scope_link(self, obj: IdempotencyRecord) -> str:
        """The scope; ``user:<pk>`` links to that user's admin page (built from the
        pk: no query per row)."""
        user_model = get_user_model()
        match = re.fullmatch(r"user:(\d+)", obj.scope)
        if match is None or not self.admin_site.is_registered(user_model):
            return obj.scope
        opts = user_model._meta
        try:
            url = reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                args=[match.group(1)],
            )
        except NoReverseMatch:
            return obj.scope  # this site's URLs are not mounted, or no change page
        return format_html('<a href="{}">{}</a>', url, obj.scope)

    @admin.display(description=_("created"), ordering="created_at")
    def created(self, obj: IdempotencyRecord) -> str:
        if timezone.now() - obj.created_at < timedelta(minutes=1):
            return _in_words(obj.created_at, _("just now"))
        ago = _("%(time)s ago") % {"time": timesince(obj.created_at, depth=1)}
        return _in_words(obj.created_at, ago)

    @admin.display(description=_("expiry"), ordering="expires_at")
    def expiry(self, obj: IdempotencyRecord) -> str:
        if obj.is_expired:
            text = _("expired %(time)s ago") % {"time": timesince(obj.expires_at, depth=1)}
        else:
            text = _("in %(time)s") % {"time": timeuntil(obj.expires_at, depth=1)}
        return _in_words(obj.expires_at, text)

    @admin.display(description=_("body"))
    @encryption.shown_opened
    def body(self, obj: IdempotencyRecord) -> SafeString:
        """The stored body as safe HTML: pretty masked JSON, escaped text, or its size."""
        body = bytes(obj.response_body) if obj.response_body is not None else b""
        if not body:
            return format_html("<em>{}</em>", _("empty"))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _size(obj, body)
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            return format_html(
                "<pre>{}</pre>", json.dumps(mask(data), indent=2, ensure_ascii=False)
            )
        if not all(char.isprintable() or char in "\t\r\n" for char in text):
            return _size(obj, body)
        if len(body) > MAX_SHOWN_BYTES:
            shown = body[:MAX_SHOWN_BYTES].decode("utf-8", "ignore")
            return format_html(
                "<pre>{}</pre><em>{}</em>",
                shown,
                _("(first %(shown)d of %(size)d bytes)")
                % {"shown": MAX_SHOWN_BYTES, "size": len(body)},
            )
        return format_html("<pre>{}</pre>", text)

    @admin.display(description=_("headers"))
    @encryption.shown_opened
    def headers(self, obj: IdempotencyRecord) -> SafeString:
        """The stored response headers as a table, sensitive values masked."""
        rows = [(name, MASK if is_masked(name) else value) for name, value in obj.headers]
        if not rows:
            return format_html("<em>{}</em>", _("none"))
        return format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

    # Writes go to the store's database, not to the replica the list was read from.

    def delete_queryset(self, request: HttpRequest, queryset: Records) -> None:
        queryset.using(store_database()).delete()

    def delete_model(self, request: HttpRequest, obj: IdempotencyRecord) -> None:
        obj.delete(using=store_database())

    @admin.action(description=_("Expire selected keys"), permissions=["delete"])
    def expire_selected(self, request: HttpRequest, queryset: Records) -> None:
        now: datetime = timezone.now()
        count = queryset.using(store_database()).filter(expires_at__gt=now).update(expires_at=now)
        self.message_user(
            request,
            ngettext(
                "Expired %(count)d key: a request with it now runs the view again.",
                "Expired %(count)d keys: a request with any of them now runs the view again.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )
