"""A runnable demo of the spec's API, served with django-idempotency."""
