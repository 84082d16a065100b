from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("testproject.api.urls")),
]

# Unrouted URLs, malformed requests and crashes answer in the API's error
# envelope too (when DEBUG is off).
handler400 = "testproject.api.exceptions.handler400"
handler404 = "testproject.api.exceptions.handler404"
handler500 = "testproject.api.exceptions.handler500"
