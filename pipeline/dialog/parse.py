"""The parsers' public face, kept for the code and tests that read slot values one at a time.

The parsers themselves live in :mod:`pipeline.dialog.understand` (one module per kind of value).
"""

from __future__ import annotations

from pipeline.dialog.understand.answers import (  # noqa: F401
    is_correction,
    is_no_request,
    parse_note,
    parse_yes_no,
)
from pipeline.dialog.understand.dates import parse_date  # noqa: F401
from pipeline.dialog.understand.extract import Analysis, analyze, extract_slots  # noqa: F401
from pipeline.dialog.understand.names import name_is_plausible, parse_name, parse_name_answer  # noqa: F401
from pipeline.dialog.understand.party import parse_party_size  # noqa: F401
from pipeline.dialog.understand.phone import (  # noqa: F401
    caller_number,
    is_valid_phone,
    parse_phone,
    repair_phone,
)
from pipeline.dialog.understand.text import MAX_UTTERANCE, IsOpen, detect_language, normalize  # noqa: F401
from pipeline.dialog.understand.times import parse_time  # noqa: F401
