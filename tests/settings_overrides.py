"""tests.settings with settings from the environment, for a server a test starts.

``TEST_SETTINGS_OVERRIDES`` is a JSON object of setting names and values, e.g.
``{"IDEMPOTENCY_SCOPE": "myapp.nowhere.scope"}``: a misconfigured server.
"""

from __future__ import annotations

import json
import os

from tests.settings import *  # noqa: F403

globals().update(json.loads(os.environ.get("TEST_SETTINGS_OVERRIDES", "{}")))
