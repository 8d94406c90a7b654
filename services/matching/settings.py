from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import AliasChoices, Field

from services.matching.geo import DEMO_CENTROIDS
from shared.settings import BaseServiceSettings


class MatchingSettings(BaseServiceSettings):
    # How long an agency has to answer an offer, by urgency.
    deadline_urgent_h: float = 2
    deadline_soon_h: float = 24
    deadline_routine_h: float = 72
    # Offers made for one need before it is reported unmatched.
    max_offer_attempts: int = Field(default=5, ge=1)
    # Agencies offered an urgent need at once (1: one at a time, like every other need). The
    # first to accept wins; the others are withdrawn.
    urgent_fanout: int = Field(default=1, ge=1)
    # How far each answered offer moves an agency's acceptance rate and response time.
    agency_stats_weight: float = Field(default=0.2, gt=0, le=1)
    # Needs handled together in one transaction: at most this many, gathered for at most
    # this long. Under load a batch fills at once from the backlog; when idle, a lone need
    # waits the window, so it is kept short.
    needs_batch_max: int = Field(default=200, ge=1)
    needs_batch_window_ms: float = Field(default=5, gt=0)
    # ZIP code centroids (postal_code,county,state,latitude,longitude) for distance and radius.
    postal_centroids_path: Path = DEMO_CENTROIDS
    # Faust's working directory; with the memory store nothing durable is kept there.
    faust_datadir: Path = Path(tempfile.gettempdir()) / "refnet-matching"
    # The worker's HTTP endpoint: /healthz, /readyz and /metrics only. MATCHING_HTTP_* win
    # over the HTTP_HOST / HTTP_PORT every service reads.
    http_host: str = Field(
        default="127.0.0.1", validation_alias=AliasChoices("matching_http_host", "http_host")
    )
    http_port: int = Field(
        default=8002, validation_alias=AliasChoices("matching_http_port", "http_port")
    )
