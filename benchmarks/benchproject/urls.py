from django.urls import path

from . import async_views, views

urlpatterns = [
    path("baseline/", views.PlainOrderView.as_view()),
    path("baseline-atomic/", views.AtomicOrderView.as_view()),
    path("ours/", views.IdempotentOrderView.as_view()),
    path("floor-db/", views.FloorDatabaseOrderView.as_view()),
    path("floor-db-writes/", views.FloorDatabaseWritesOrderView.as_view()),
    path("floor-db-insert/", views.FloorDatabaseInsertOrderView.as_view()),
    path("floor-redis/", views.FloorRedisOrderView.as_view()),
    path("baseline-token/", views.TokenPlainOrderView.as_view()),
    path("ours-token/", views.TokenIdempotentOrderView.as_view()),
    # bench_asgi.py: plain Django views under uvicorn.
    path("asgi/async-plain/", async_views.async_plain),
    path("asgi/async-ours/", async_views.async_guarded),
    path("asgi/sync-ours/", async_views.sync_guarded),
    # growth.py: the same view answering with a body of <size> bytes.
    path("sized/<int:size>/", views.SizedPlainOrderView.as_view()),
    path("ours-sized/<int:size>/", views.SizedIdempotentOrderView.as_view()),
]

_peer_view = views._idempotencykey_view()
if _peer_view is not None:
    urlpatterns.append(path("drf-idempotencykey/", _peer_view.as_view()))
