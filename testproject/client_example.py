"""Create a job in the demo with the package's client helper.

    python testproject/client_example.py http://127.0.0.1:8000 fh_test_...

The helper gives the POST an Idempotency-Key (a UUID4), keeps it across its
retries, and retries lost connections, timeouts, 429, 5xx and "409 still
running" with backoff; a conflict or another 4xx comes back at once.
"""

from __future__ import annotations

import json
import sys

from django_idempotency.client import IdempotentSession


def create_job(base: str, api_key: str) -> dict[str, object]:
    with IdempotentSession() as session:
        response = session.post(
            f"{base}/v1/jobs",
            json={
                "type": "data_collection",
                "description": "Photo of storefront",
                "files_needed": 5,
                "accepted_formats": ["image/jpeg"],
                "price_per_file_cents": 40,
            },
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
    print(response.status_code, "Idempotency-Key:", response.request.headers["Idempotency-Key"])
    response.raise_for_status()
    job: dict[str, object] = response.json()
    return job


if __name__ == "__main__":
    print(json.dumps(create_job(sys.argv[1].rstrip("/"), sys.argv[2]), indent=2))
