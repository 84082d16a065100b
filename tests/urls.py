from django.urls import include, path

urlpatterns = [
    path("t/", include("tests.testapp.urls")),
    path("", include("testproject.urls")),
]

# As the demo's root URLconf does (Django reads these from the root only).
handler400 = "django_idempotency.contrib.handlers.handler400"
handler404 = "django_idempotency.contrib.handlers.handler404"
handler500 = "django_idempotency.contrib.handlers.handler500"
