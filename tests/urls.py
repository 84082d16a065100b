from django.urls import include, path

urlpatterns = [
    path("t/", include("tests.testapp.urls")),
    path("", include("testproject.urls")),
]
