"""DRF's JSONParser with a 400, not a 500, for JSON nested too deeply to parse.

DRF catches ``ValueError`` only; JSON nested near Python's recursion limit
raises ``RecursionError``. ``@idempotent`` refuses such bodies on the POSTs it
guards; this covers the test views' other methods (PATCH).
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
