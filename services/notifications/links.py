"""One-click links in messages: signed (tampering shows), expiring, and good for one use
(the first answer is recorded in link_uses; the signature alone can't know it was used).

itsdangerous signs and timestamps the token; its clock is ours, so tests move time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from shared.clock import Clock

CHECK_IN = "check-in"
OUTCOME = "outcome"


@dataclass(frozen=True)
class Link:
    link_id: UUID
    need_id: UUID
    purpose: str  # check-in | outcome
    day: int | None = None  # which aftercare check-in
    offer_id: UUID | None = None  # whose outcome
    agency_id: str | None = None
    language: str = "en"


class LinkInvalid(Exception):
    pass


class LinkExpired(LinkInvalid):
    pass


class Links:
    def __init__(self, secret: str, clock: Clock, max_age_days: int, base_url: str) -> None:
        now = clock.now

        class _Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(now().timestamp())

        self._serializer = URLSafeTimedSerializer(secret, salt="refnet-links", signer=_Signer)
        self._max_age_s = max_age_days * 86400
        self._base_url = base_url.rstrip("/")

    def url(self, link: Link) -> str:
        return f"{self._base_url}/l/{self.token(link)}"

    def token(self, link: Link) -> str:
        fields: dict[str, Any] = {
            "l": str(link.link_id),
            "n": str(link.need_id),
            "p": link.purpose,
            "g": link.language,
        }
        if link.day is not None:
            fields["d"] = link.day
        if link.offer_id is not None:
            fields["o"] = str(link.offer_id)
            fields["a"] = link.agency_id
        return str(self._serializer.dumps(fields))

    def read(self, token: str) -> Link:
        try:
            fields = self._serializer.loads(token, max_age=self._max_age_s)
        except SignatureExpired as exc:
            raise LinkExpired("this link has expired") from exc
        except BadSignature as exc:
            raise LinkInvalid("this link is not valid") from exc
        return Link(
            link_id=UUID(fields["l"]),
            need_id=UUID(fields["n"]),
            purpose=fields["p"],
            day=fields.get("d"),
            offer_id=UUID(fields["o"]) if "o" in fields else None,
            agency_id=fields.get("a"),
            language=fields.get("g", "en"),
        )
