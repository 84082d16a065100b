"""Optional integrations: the OpenAPI extension, Django's error views, the outage middleware."""
