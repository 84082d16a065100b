from django.urls import path
from rest_framework.routers import SimpleRouter

from . import async_views, key_views, stream_views, upload_views, views

router = SimpleRouter(trailing_slash=False)
router.register("widgets", views.WidgetViewSet, basename="widget")

urlpatterns = [
    path("apiview", views.WidgetAPIView.as_view()),
    path("function", views.widget_function),
    path("plain", views.plain_view),
    path("upload", upload_views.UploadView.as_view()),
    path("plain-upload", upload_views.plain_upload),
    path("plain-upload-token", upload_views.plain_upload_token),
    path("login", upload_views.login_view),
    path("stream-parsed", upload_views.StreamParsedView.as_view()),
    path("plain-read-first", upload_views.plain_read_first),
    path("download", stream_views.download),
    path("charge", key_views.charge),
    path("sync-stream", stream_views.sync_stream),
    path("async-stream-cookie", stream_views.async_stream),
    path("async", async_views.async_widget),
    path("async-stream", async_views.async_stream),
    path("async-optional", async_views.async_optional),
    path("async-class", async_views.AsyncWidgetView.as_view()),
    *router.urls,
]
