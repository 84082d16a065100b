"""Read-friendly admin pages for the demo's data."""

from django.contrib import admin

from .models import Account, ApiKey, Job, Purchase, Rating, WebhookEndpoint


class _ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ("prefix", "name", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("user", "credits_cents", "created_at")
    search_fields = ("user__username",)
    readonly_fields = ("created_at",)
    inlines = (_ApiKeyInline,)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "account", "created_at")
    search_fields = ("prefix", "name", "account__user__username")
    # Keys are issued by the API or create_api_key; the hash is not for editing.
    readonly_fields = ("account", "prefix", "secret_hash", "created_at")

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "account",
        "type",
        "status",
        "files_needed",
        "reserved_cents",
        "created_at",
    )
    list_filter = ("status", "type")
    search_fields = ("description", "account__user__username")
    readonly_fields = ("created_at",)


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ("job", "rating", "created_at")
    list_filter = ("rating",)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("url", "account", "created_at")
    search_fields = ("url", "account__user__username")
    readonly_fields = ("secret", "created_at")


@admin.register(Purchase)
class PurchaseAdmin(admin.ModelAdmin):
    list_display = ("id", "account", "amount_cents", "created_at")
    readonly_fields = ("created_at",)
