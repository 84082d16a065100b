"""A runnable demo: a jobs API, served with django-idempotency."""
