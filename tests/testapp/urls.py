from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash=False)
router.register("widgets", views.WidgetViewSet, basename="widget")

urlpatterns = [
    path("apiview", views.WidgetAPIView.as_view()),
    path("function", views.widget_function),
    path("plain", views.plain_view),
    *router.urls,
]
