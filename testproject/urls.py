from importlib.util import find_spec

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("testproject.api.urls")),
]

if find_spec("drf_spectacular") is not None:
    # The [demo] extra installs drf-spectacular; the API itself works without it.
    from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

    urlpatterns += [
        path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
        path("v1/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    ]

# Unrouted URLs, malformed requests and crashes answer in the API's error
# envelope too (when DEBUG is off).
handler400 = "django_idempotency.contrib.handlers.handler400"
handler404 = "django_idempotency.contrib.handlers.handler404"
handler500 = "django_idempotency.contrib.handlers.handler500"
