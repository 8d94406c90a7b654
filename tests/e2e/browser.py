"""A worker's browser, minus the rendering: an HTTP client that keeps the session cookie and
fills forms the way the intake pages present them (CSRF token included)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

import httpx


@dataclass
class NeedRow:
    need_id: str
    category: str
    status: str
    agency_id: str


class _StatusPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[NeedRow] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-need-id"):
            self.rows.append(
                NeedRow(
                    a["data-need-id"] or "",
                    a.get("data-category") or "",
                    "",
                    a.get("data-agency-id") or "",
                )
            )
        elif tag == "td" and a.get("data-status") and self.rows:
            self.rows[-1].status = a["data-status"] or ""


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def field_error(html: str, field: str) -> str | None:
    match = re.search(rf'id="{re.escape(field)}-error">([^<]+)<', html)
    return match.group(1) if match else None


def need_rows(html: str) -> list[NeedRow]:
    parser = _StatusPage()
    parser.feed(html)
    return parser.rows


class WorkerBrowser:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, follow_redirects=True, timeout=30)

    def log_in(self, email: str, password: str) -> httpx.Response:
        token = csrf_token(self.http.get("/login").text)
        return self.http.post(
            "/login", data={"email": email, "password": password, "csrf_token": token}
        )

    def submit_intake(self, fields: dict[str, str]) -> httpx.Response:
        token = csrf_token(self.http.get("/intakes/new").text)
        return self.http.post("/intakes", data={**fields, "csrf_token": token})

    def status(self, intake_path: str) -> list[NeedRow]:
        return need_rows(self.http.get(intake_path).text)
