from django.urls import include, path

urlpatterns = [
    path("t/", include("tests.testapp.urls")),
    path("", include("testproject.urls")),
]

# As the demo's root URLconf does (Django reads these from the root only).
handler400 = "testproject.api.exceptions.handler400"
handler404 = "testproject.api.exceptions.handler404"
handler500 = "testproject.api.exceptions.handler500"
