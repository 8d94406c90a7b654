from __future__ import annotations

import tempfile
from pathlib import Path

from shared.settings import BaseServiceSettings

DEMO_DIRECTORY = Path(__file__).parent / "directory" / "demo"


class MatchingSettings(BaseServiceSettings):
    # How long an agency has to answer an offer, by urgency.
    deadline_urgent_h: float = 2
    deadline_soon_h: float = 24
    deadline_routine_h: float = 72
    # Agencies asked in turn before the need is reported unmatched.
    max_offer_attempts: int = 5
    # An HSDS tabular data package (CSV) loaded at start-up.
    directory_path: Path = DEMO_DIRECTORY
    # Faust's working directory; with the memory store nothing durable is kept there.
    faust_datadir: Path = Path(tempfile.gettempdir()) / "refnet-matching"
