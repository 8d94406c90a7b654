"""A worker's browser, minus the rendering: an HTTP client that keeps the session cookie and
fills forms the way the intake pages present them (CSRF token and submission id included).

Also what the e2e tests share to drive the stack as its users do: a distinct person per test
(the stack lives for the whole session, and a known name and date of birth makes the form
ask whether to reuse that person), the complete intake form for them, the stack's own date,
and new worker accounts made the way an administrator makes them."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from html.parser import HTMLParser
from typing import Any

import httpx

from services.local_stack import LocalStack
from shared.clock import OffsetFileClock
from tests.e2e.cli import refnet_cli

# A form as a browser sends it: (name, value) pairs, a name repeating for a checkbox group.
Pairs = list[tuple[str, str]]
Fields = Iterable[tuple[str, str]] | Mapping[str, str | Sequence[str]]


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


class _FormReader(HTMLParser):
    """The values a browser would submit from the form posting to ``action``: text and
    hidden inputs, ticked checkboxes and radios, each select's chosen option, textareas.
    Buttons are left out (the caller says which one was pressed)."""

    def __init__(self, action: str) -> None:
        super().__init__(convert_charrefs=True)
        self.action = action
        self.found = False
        self.pairs: Pairs = []
        self._inside = False
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._inside = a.get("action") == self.action
            self.found = self.found or self._inside
            return
        if not self._inside:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "reset", "image"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.pairs.append((name, a.get("value") or ("on" if kind == "checkbox" else "")))
        elif tag == "select" and name:
            self._select, self._options = name, []
        elif tag == "option" and self._select is not None:
            self._options.append((a.get("value") or "", "selected" in a))
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False
        elif tag == "select" and self._select is not None:
            chosen = [value for value, selected in self._options if selected]
            first = [value for value, _ in self._options[:1]]
            self.pairs.extend((self._select, v) for v in (chosen[:1] or first))
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self.pairs.append((self._textarea, "".join(self._text)))
            self._textarea = None


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def hidden_value(html: str, name: str) -> str:
    match = re.search(rf'type="hidden" name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"page has no hidden {name}"
    return match.group(1)


def field_error(html: str, field: str) -> str | None:
    """The error shown beside ``field`` (a dotted form name, like person.postal_code)."""
    match = re.search(rf'id="{re.escape(field.replace(".", "-"))}-error">([^<]+)<', html)
    return match.group(1) if match else None


def form_values(html: str, action: str = "/intakes") -> Pairs:
    """What submitting the page's form to ``action`` would send, as it stands."""
    reader = _FormReader(action)
    reader.feed(html)
    assert reader.found, f"page has no form posting to {action}"
    return reader.pairs


def person_match_choices(html: str) -> list[str]:
    """The values of the "is this someone already on record?" radios (reuse:<id>, new)."""
    return re.findall(r'name="person_match" value="([^"]+)"', html)


def need_rows(html: str) -> list[NeedRow]:
    parser = _StatusPage()
    parser.feed(html)
    return parser.rows


def as_pairs(fields: Fields) -> Pairs:
    if isinstance(fields, Mapping):
        pairs: Pairs = []
        for name, value in fields.items():
            values = [value] if isinstance(value, str) else list(value)
            pairs.extend((name, v) for v in values)
        return pairs
    return list(fields)


def with_fields(fields: Fields, changes: Mapping[str, str | Sequence[str] | None]) -> Pairs:
    """``fields`` with each named field replaced by the given value (or values, for a
    checkbox group), or left out when the value is None, as an unticked box is."""
    kept = [(n, v) for n, v in as_pairs(fields) if n not in changes]
    added = {n: v for n, v in changes.items() if v is not None}
    return kept + as_pairs(added)


@dataclass(frozen=True)
class Person:
    """Someone no other test uses: a unique family name, and a date of birth of their own."""

    legal_given_name: str
    legal_family_name: str
    preferred_name: str
    date_of_birth: str
    email: str
    phone: str
    need_note: str

    @classmethod
    def new(cls, given: str = "Marisol", family: str = "Quintanilla") -> Person:
        # Letters that are not hex digits, so the token cannot turn up inside an id.
        token = "".join(secrets.choice("ghjkmnpqrstvwxyz") for _ in range(6))
        born = date(1960, 1, 1) + timedelta(days=secrets.randbelow(40 * 365))
        return cls(
            legal_given_name=given,
            legal_family_name=f"{family}-{token.capitalize()}",
            preferred_name=f"{given[:4]}{token}",
            date_of_birth=born.isoformat(),
            email=f"{given.lower()}.{token}@example.net",
            phone=f"503-555-{secrets.randbelow(10_000):04d}",
            need_note=f"Evening groups only, ask for {token}",
        )

    @property
    def signature(self) -> str:
        return f"{self.legal_given_name} {self.legal_family_name}"

    @property
    def identifiers(self) -> tuple[str, ...]:
        """Everything that identifies them: none of it may leave intake before acceptance."""
        return (
            self.legal_given_name,
            self.legal_family_name,
            self.preferred_name,
            self.date_of_birth,
            self.email,
            self.phone,
            self.phone.replace("-", ""),
            self.need_note,
            self.signature,
        )


DEFAULT_NEEDS = (("peer-support", "urgent", "note"), ("employment", "routine", ""))


def intake_form(
    person: Person,
    today: date,
    *,
    needs: Sequence[tuple[str, str, str]] = DEFAULT_NEEDS,
    languages: Sequence[str] = ("es", "en"),
    channel: str = "sms",
    postal_code: str = "97214",
    county: str = "Multnomah",
    stage: str = "early-recovery",
) -> Pairs:
    """A complete, valid intake form for ``person``, consent signed ``today`` (the stack's
    date: see stack_today). Each need is (category, urgency, note); a note of "note" means
    the person's own need note."""
    fields: Pairs = [
        ("person.legal_given_name", person.legal_given_name),
        ("person.legal_family_name", person.legal_family_name),
        ("person.preferred_name", person.preferred_name),
        ("person.date_of_birth", person.date_of_birth),
        ("person.email", person.email),
        ("person.phone", person.phone),
        ("person.preferred_channel", channel),
        # Any time of day, so what the person is sent does not wait on the hour tests run at.
        ("person.contact_from", "00:00"),
        ("person.contact_until", "23:59"),
        *[("person.languages", language) for language in languages],
        ("person.postal_code", postal_code),
        ("person.county", county),
        ("recovery.stage", stage),
        ("need_rows", str(max(3, len(needs)))),
    ]
    for i, (category, urgency, note) in enumerate(needs):
        fields += [
            (f"needs.{i}.category", category),
            (f"needs.{i}.urgency", urgency),
            (f"needs.{i}.note", person.need_note if note == "note" else note),
        ]
    return [
        *fields,
        ("constraints.needs_child_care", "yes"),
        ("constraints.mat_friendly_required", "yes"),
        ("constraints.insurance", "medicaid"),
        ("consent.recipients", "network"),
        ("consent.expires_on", (today + timedelta(days=365)).isoformat()),
        ("consent.signature", person.signature),
        ("consent.signed_on", today.isoformat()),
        ("consent.confirmed", "yes"),
    ]


def stack_today(stack: LocalStack) -> date:
    """The date the services live in (UTC, moved on by tests that advance the clock)."""
    return OffsetFileClock(stack.clock_offset_file).now().date()


@dataclass(frozen=True)
class BlankForm:
    """What a freshly opened intake form carries besides the fields: its tokens."""

    csrf_token: str
    submission_id: str
    need_rows: str


class WorkerBrowser:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, follow_redirects=True, timeout=30)

    def log_in(self, email: str, password: str) -> httpx.Response:
        token = csrf_token(self.http.get("/login").text)
        return self.http.post(
            "/login", data={"email": email, "password": password, "csrf_token": token}
        )

    def open_intake_form(self) -> BlankForm:
        page = self.http.get("/intakes/new")
        assert page.url.path == "/intakes/new", f"not logged in: landed on {page.url.path}"
        html = page.text
        return BlankForm(
            csrf_token(html), hidden_value(html, "submission_id"), hidden_value(html, "need_rows")
        )

    def post_intake(self, fields: Fields, form: BlankForm) -> httpx.Response:
        """Press "Submit intake" on ``form`` filled with ``fields``."""
        return self.http.post("/intakes", data=filled(form, fields))

    def submit_intake(self, fields: Fields) -> httpx.Response:
        """Open a new intake form, fill it in with ``fields`` and submit it."""
        return self.post_intake(fields, self.open_intake_form())

    def resubmit(self, page: httpx.Response, extra: Fields = ()) -> httpx.Response:
        """Submit the form ``page`` shows again, as it stands, plus ``extra`` choices."""
        pairs = [*form_values(page.text), *as_pairs(extra), ("action", "submit")]
        return self.http.post("/intakes", data=_form_data(pairs))

    def status(self, intake_path: str) -> list[NeedRow]:
        return need_rows(self.http.get(intake_path).text)

    def needs(self, intake_path: str) -> list[NeedRow]:
        """The tracker's needs table alone, as the page's script refreshes it."""
        response = self.http.get(f"{intake_path}/needs")
        assert response.status_code == 200, response.text
        return need_rows(response.text)


def filled(form: BlankForm, fields: Fields) -> dict[str, Any]:
    """The request data of ``form`` filled with ``fields`` and submitted: the form's hidden
    tokens go with it unless ``fields`` carries its own."""
    pairs = as_pairs(fields)
    given = {name for name, _ in pairs}
    hidden = [
        (name, value)
        for name, value in (
            ("csrf_token", form.csrf_token),
            ("submission_id", form.submission_id),
            ("need_rows", form.need_rows),
            ("action", "submit"),
        )
        if name not in given
    ]
    return _form_data(hidden + pairs)


def _form_data(pairs: Pairs) -> dict[str, Any]:
    """httpx takes a repeated field as a list value: ("a", "1"), ("a", "2") -> {"a": [1, 2]}."""
    data: dict[str, Any] = {}
    for name, value in pairs:
        if name in data:
            data[name] = [*(data[name] if isinstance(data[name], list) else [data[name]]), value]
        else:
            data[name] = value
    return data


def add_worker(stack: LocalStack, name: str, role: str = "intake_worker") -> tuple[str, str]:
    """A new worker account made with `refnet users add`; its email and password."""
    email = f"{name.lower().replace(' ', '.')}-{secrets.token_hex(4)}@refnet.local"
    password = secrets.token_urlsafe(16)
    out = refnet_cli(
        stack,
        "users",
        "add",
        email,
        "--name",
        name,
        "--role",
        role,
        "--password-stdin",
        stdin=password + "\n",
    )
    assert email in out
    return email, password
