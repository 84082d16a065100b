from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import views

# The API's paths have no trailing slash.
router = SimpleRouter(trailing_slash=False)
router.register("jobs", views.JobViewSet, basename="job")
router.register("api_keys", views.ApiKeyViewSet, basename="api_key")
router.register("webhook_endpoints", views.WebhookEndpointViewSet, basename="webhook_endpoint")
router.register("billing", views.BillingViewSet, basename="billing")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("v1/account", views.AccountView.as_view(), name="account"),
]
