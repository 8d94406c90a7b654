"""Hostile input at the HTML forms of the running stack, and their sessions.

- Generated hostile values in every field of the intake form, and in the agency inbox's
  decline and outcome forms: never a 5xx, and a refused post writes nothing.
- Markup typed into every free-text field (and an agency named with it) is shown as text on
  every page that shows it: the tracker, the dashboard, the admin pages, the inbox.
- Form posts without the CSRF token, or with a wrong one, are refused and change nothing.
- A session past its age, or one signed by someone else, is sent to the login; so is the
  cookie of a session that logged out, even when replayed.

One need of a person with markup for a name is offered to a throwaway agency with markup
for a name, serving a ZIP code no demo agency serves, so nothing here reaches the agencies
the other tests use; the agency leaves the directory by tombstone at the end."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner

from services.local_stack import DEMO_WORKER_EMAIL, LocalStack
from services.notifications.accounts import add_user
from shared.cloudevents import encode
from shared.events import DeclineReason, NeedCategory, Outcome
from shared.topics import AGENCIES
from tests.e2e.browser import (
    Pairs,
    Person,
    WorkerBrowser,
    add_worker,
    csrf_token,
    field_error,
    intake_form,
    stack_today,
    with_fields,
)
from tests.factories import ServiceSpec, agency_profile
from tests.kafka_reader import eventually

pytestmark = pytest.mark.e2e

HOSTILE = "<script>alert(1)</script>\"'&"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39;&amp;"
RAW_TAG = "<script>alert(1)</script>"
OFFER_ROW = r'data-offer-id="([0-9a-f-]{36})"'
# A ZIP code no demo agency serves, in no county they serve.
LONELY_ZIP = "99950"
INTAKE_TABLES = ("persons", "consents", "intakes", "needs", "outbox", "disclosures")
# Values that have broken form handlers elsewhere: markup, SQL, NUL, control and
# bidirectional characters, huge numbers and strings, odd dates and times.
NASTY = [
    HOSTILE,
    "' OR '1'='1' --",
    "\x00",
    "a\x00b",
    "\r\n\t",
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "\ufeff",
    "%00",
    "../../etc/passwd",
    "{{7*7}}",
    "${7*7}",
    "-1",
    "0",
    "1e309",
    "NaN",
    "9" * 5000,
    "x" * 20000,
    "2999-99-99",
    "0000-00-00",
    "24:61",
    "reuse:00000000-0000-4000-8000-000000000000",
    "new",
    "add-need",
]
hostile_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=120),
)


def sealed_cookie(secret: str, session: dict[str, Any], signed_at: int | None = None) -> str:
    """A session cookie as Starlette's SessionMiddleware writes it, signed at ``signed_at``."""

    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return signed_at if signed_at is not None else int(time.time())

    data = base64.b64encode(json.dumps(session).encode())
    return Signer(secret).sign(data).decode()


def assert_escaped(page: httpx.Response, where: str) -> None:
    assert page.status_code < 500, (where, page.status_code)
    assert RAW_TAG not in page.text, f"{where} shows the markup as markup"
    assert ESCAPED in page.text, f"{where} does not show the typed text"


@pytest.fixture(scope="module")
def db(stack: LocalStack) -> Iterator[psycopg.Connection[Any]]:
    assert stack.infra is not None
    with psycopg.connect(stack.infra.database_url, autocommit=True) as conn:
        yield conn


def counts(db: psycopg.Connection[Any], schema: str, tables: tuple[str, ...]) -> dict[str, int]:
    found = {}
    for table in tables:
        row = db.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()
        assert row is not None
        found[table] = int(row[0])
    return found


class Inbox:
    """Someone at an agency in the web inbox, logged in."""

    def __init__(self, stack: LocalStack, email: str, password: str) -> None:
        self.email, self.password = email, password
        self.http = httpx.Client(base_url=stack.agency_api_url, timeout=30)
        self.log_in()

    @classmethod
    async def add(cls, stack: LocalStack, agency_id: str) -> Inbox:
        # `refnet agency user add` wants the agency in the directory's own tables; this one
        # is only on the topic, so the account is made as that command makes it.
        assert stack.infra is not None
        email, password = f"inbox-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(16)
        await add_user(stack.infra.database_url, agency_id, email, "Hostile Tester", password)
        return cls(stack, email, password)

    def log_in(self) -> httpx.Response:
        token = csrf_token(self.http.get("/inbox/login").text)
        landed = self.http.post(
            "/inbox/login",
            data={"email": self.email, "password": self.password, "csrf_token": token},
            follow_redirects=True,
        )
        assert landed.url.path == "/inbox", landed.text
        return landed

    @property
    def csrf(self) -> str:
        return csrf_token(self.http.get("/inbox").text)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hostile(stack: LocalStack) -> AsyncIterator[dict[str, Any]]:
    """A person named with markup, whose need is offered to an agency named with markup."""
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    agency_id = f"ag-e2e-xss-{secrets.token_hex(3)}"
    service = ServiceSpec(
        f"svc-{agency_id}",
        category=NeedCategory.HOUSING,
        zips=(LONELY_ZIP,),
        location=None,
        languages=("en", "es"),
        mat_friendly=True,
    )
    profile = agency_profile(agency_id, service, name=f"{HOSTILE} Agency")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    conn = psycopg.connect(stack.infra.database_url, autocommit=True)

    def known(present: bool = True) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM matching.match_services WHERE agency_id = %s", (agency_id,)
        ).fetchone()
        return bool(row and row[0]) == present

    try:
        headers, value = encode(
            profile, event_id=uuid4(), source="/tests/hostile", time=datetime.now(UTC)
        )
        await producer.send_and_wait(
            AGENCIES.name, key=agency_id.encode(), value=value, headers=headers
        )
        await eventually(known, "the agency in matching's directory")
        inbox = await Inbox.add(stack, agency_id)
        leaving = await Inbox.add(stack, agency_id)
        worker = WorkerBrowser(stack.intake_url)
        worker.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
        base = Person.new("Hostile", "Input")
        token = base.legal_family_name.rsplit("-", 1)[1]
        person = dataclasses.replace(
            base,
            legal_given_name=HOSTILE,
            legal_family_name=f"{HOSTILE}{token}",
            preferred_name=f"{HOSTILE} {token}",
            need_note=HOSTILE,
        )
        fields = intake_form(
            person,
            stack_today(stack),
            needs=[("housing", "urgent", "note")],
            postal_code=LONELY_ZIP,
            county=HOSTILE,
        )
        refused = worker.submit_intake(fields)
        assert refused.status_code == 422, refused.text
        assert field_error(refused.text, "person.county")
        tracker = worker.submit_intake(with_fields(fields, {"person.county": "O'Brien"}))
        assert tracker.status_code == 200 and re.fullmatch(
            r"/intakes/[0-9a-f-]{36}", tracker.url.path
        ), tracker.text
        rows = await eventually(
            lambda: (r := worker.needs(tracker.url.path)) and r[0].status == "offered" and r,
            "the need offered to the agency",
        )
        assert rows[0].agency_id == agency_id
        # (notifications hears of the offer on its own, perhaps after intake)
        offer_id = await eventually(
            lambda: re.findall(OFFER_ROW, inbox.http.get("/inbox").text),
            "the offer in the agency's inbox",
        )
        assert len(offer_id) == 1, offer_id
        yield {
            "agency_id": agency_id,
            "person": person,
            "worker": worker,
            "inbox": inbox,
            "leaving": leaving,
            "refused_form": refused,
            "intake_path": tracker.url.path,
            "need_id": rows[0].need_id,
            "offer_id": offer_id[0],
        }
    finally:
        # The agency leaves the directory (a matching restart must find the view it reads
        # back from the topic equal to what the directory's owner published).
        await producer.send_and_wait(AGENCIES.name, key=agency_id.encode(), value=None)
        await producer.stop()
        await eventually(lambda: known(present=False), "the agency removed")
        conn.close()


# --- generated hostile values ------------------------------------------------------------

INTAKE_FIELDS = [
    "submission_id",
    "action",
    "need_rows",
    "person_match",
    "person.legal_given_name",
    "person.legal_family_name",
    "person.preferred_name",
    "person.date_of_birth",
    "person.email",
    "person.phone",
    "person.preferred_channel",
    "person.contact_from",
    "person.contact_until",
    "person.languages",
    "person.postal_code",
    "person.county",
    "person.gender",
    "recovery.stage",
    "recovery.barc10.0",
    "recovery.barc10.9",
    "needs.0.category",
    "needs.0.urgency",
    "needs.0.note",
    "needs.19.category",
    "constraints.insurance",
    "constraints.needs_child_care",
    "consent.recipients",
    "consent.named_agencies",
    "consent.expires_on",
    "consent.expiry_event",
    "consent.signature",
    "consent.signed_on",
    "consent.confirmed",
]


@pytest.fixture(scope="module")
def admin_account(stack: LocalStack) -> tuple[str, str]:
    """An administrator's email and password, for the admin pages; the last test logs out."""
    return add_worker(stack, "Hostile Admin", role="admin")


@pytest.fixture(scope="module")
def worker(stack: LocalStack) -> WorkerBrowser:
    browser = WorkerBrowser(stack.intake_url)
    browser.log_in(DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"])
    return browser


@pytest.fixture(scope="module")
def valid_form(stack: LocalStack) -> Pairs:
    """A complete intake with every BARC-10 rating given, so a rating's value is used."""
    form = intake_form(Person.new("Fuzz", "Generated"), stack_today(stack),
                       needs=[("clothing", "routine", "")], postal_code=LONELY_ZIP)  # fmt: skip
    return [*form, *[(f"recovery.barc10.{i}", "3") for i in range(10)]]


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(changes=st.dictionaries(st.sampled_from(INTAKE_FIELDS), hostile_text, min_size=1,
                               max_size=3))  # fmt: skip
def test_the_intake_form_takes_any_value_without_a_server_error_or_a_partial_write(
    worker: WorkerBrowser,
    valid_form: Pairs,
    db: psycopg.Connection[Any],
    changes: dict[str, str],
) -> None:
    before = counts(db, "intake", INTAKE_TABLES)
    fields = with_fields(valid_form, changes)
    if "submission_id" not in changes:
        fields.append(("submission_id", str(uuid4())))
    token = csrf_token(worker.http.get("/intakes/new").text)
    response = worker.http.post("/intakes", data=_form_data([*fields, ("csrf_token", token)]))
    assert response.status_code < 500, (changes, response.text[-2000:])
    if re.fullmatch(r"/intakes/[0-9a-f-]{36}", response.url.path):
        return  # taken (a value that is fine after all, or an earlier intake found again)
    assert response.status_code in (200, 400, 409, 422), (changes, response.status_code)
    assert counts(db, "intake", INTAKE_TABLES) == before, changes


@pytest.mark.parametrize("value", NASTY, ids=lambda v: repr(v)[:24])
def test_every_field_of_the_intake_form_at_once_takes_each_nasty_value(
    worker: WorkerBrowser, valid_form: Pairs, db: psycopg.Connection[Any], value: str
) -> None:
    """Each field's handling meets the value, in one post: the form is parsed whole and,
    refused, shown again whole."""
    before = counts(db, "intake", INTAKE_TABLES)
    fields = with_fields(valid_form, dict.fromkeys(INTAKE_FIELDS, value))
    token = csrf_token(worker.http.get("/intakes/new").text)
    response = worker.http.post("/intakes", data=_form_data([*fields, ("csrf_token", token)]))
    assert response.status_code in (200, 400, 409, 422), (value, response.text[-2000:])
    assert counts(db, "intake", INTAKE_TABLES) == before


def _form_data(pairs: Pairs) -> dict[str, list[str]]:
    """Repeated names (a checkbox group) as httpx sends them: one list per name."""
    data: dict[str, list[str]] = {}
    for name, value in pairs:
        data.setdefault(name, []).append(value)
    return data


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(
    form=st.sampled_from(["decline", "outcome"]),
    value=hostile_text.filter(lambda v: v not in {*DeclineReason, *Outcome}),
)
def test_the_inbox_answer_forms_refuse_any_other_value_and_change_nothing(
    hostile: dict[str, Any], db: psycopg.Connection[Any], form: str, value: str
) -> None:
    inbox: Inbox = hostile["inbox"]
    before = _offer_state(db, hostile["offer_id"])
    field = "reason" if form == "decline" else "outcome"
    response = inbox.http.post(
        f"/inbox/offers/{hostile['offer_id']}/{form}",
        data={field: value, "csrf_token": inbox.csrf},
    )
    assert response.status_code == 422, (form, value, response.status_code)
    assert _offer_state(db, hostile["offer_id"]) == before


def _offer_state(db: psycopg.Connection[Any], offer_id: str) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT o.status, o.stage, (SELECT count(*) FROM notifications.outbox) "
        "FROM notifications.offers o WHERE o.offer_id = %s",
        (offer_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


# --- CSRF ----------------------------------------------------------------------------------


def test_form_posts_without_or_with_a_wrong_csrf_token_are_refused_and_change_nothing(
    stack: LocalStack,
    hostile: dict[str, Any],
    db: psycopg.Connection[Any],
    admin_account: tuple[str, str],
) -> None:
    worker: WorkerBrowser = hostile["worker"]
    inbox: Inbox = hostile["inbox"]
    intake_path, need_id, offer_id = (hostile[k] for k in ("intake_path", "need_id", "offer_id"))
    admin = WorkerBrowser(stack.intake_url)
    admin.log_in(*admin_account)
    intake_posts = [
        (worker, "/logout", {}),
        (worker, "/intakes", dict(intake_form(Person.new("Csrf", "Forged"), stack_today(stack)))),
        (worker, f"{intake_path}/consent/revoke", {"method": "in-person", "confirm": "yes"}),
        (worker, f"{intake_path}/needs/{need_id}/contact-released", {}),
        (worker, f"{intake_path}/needs/{need_id}/check-ins/1/followed-up", {}),
        (admin, "/admin/persons", {"given_name": "a", "family_name": "b",
                                   "date_of_birth": "1980-01-01"}),  # fmt: skip
        (admin, "/admin/dashboard/dlq/replay",
         {"dlq_topic": "refnet.needs.v1.dlq", "dlq_partition": "0", "dlq_offset": "0"}),
    ]  # fmt: skip
    inbox_posts = [
        (inbox, "/inbox/logout", {}),
        (inbox, f"/inbox/offers/{offer_id}/accept", {}),
        (inbox, f"/inbox/offers/{offer_id}/decline", {"reason": "no-capacity"}),
        (inbox, f"/inbox/offers/{offer_id}/outcome", {"outcome": "got-help"}),
    ]
    intake_before = counts(db, "intake", (*INTAKE_TABLES, "dlq_replays"))
    offer_before = _offer_state(db, offer_id)
    for client, path, data in [*intake_posts, *inbox_posts]:
        http = client.http
        for token in (None, "forged-" + secrets.token_urlsafe(16)):
            sent = data if token is None else {**data, "csrf_token": token}
            response = http.post(path, data=sent, follow_redirects=False)
            assert response.status_code == 403, (path, token, response.status_code)
    # Logins are forms too: one without a token never reaches the password check.
    for base, path, email, password in (
        (stack.intake_url, "/login", DEMO_WORKER_EMAIL, stack.secrets["DEMO_WORKER_PASSWORD"]),
        (stack.agency_api_url, "/inbox/login", inbox.email, inbox.password),
    ):
        with httpx.Client(base_url=base) as anonymous:
            for token in (None, "forged"):
                data = {"email": email, "password": password}
                refused = anonymous.post(path, data=data | ({"csrf_token": token} if token else {}))
                assert refused.status_code == 403, (path, token)
                assert (
                    "set-cookie" not in refused.headers or "null" in refused.headers["set-cookie"]
                )

    assert counts(db, "intake", (*INTAKE_TABLES, "dlq_replays")) == intake_before
    assert _offer_state(db, offer_id) == offer_before
    consent = db.execute(
        "SELECT c.revoked_at FROM intake.consents c JOIN intake.intakes i USING (consent_id) "
        "JOIN intake.needs n USING (intake_id) WHERE n.need_id = %s",
        (need_id,),
    ).fetchone()
    assert consent is not None and consent[0] is None, "the consent still stands"
    # and the refused logouts left both sessions logged in
    assert worker.http.get("/").url.path == "/"
    assert inbox.http.get("/inbox", follow_redirects=True).url.path == "/inbox"


# --- markup shown as text ------------------------------------------------------------------


def test_typed_markup_is_shown_as_text_on_every_page_that_shows_it(
    stack: LocalStack, hostile: dict[str, Any], admin_account: tuple[str, str]
) -> None:
    worker: WorkerBrowser = hostile["worker"]
    inbox: Inbox = hostile["inbox"]
    person: Person = hostile["person"]
    offer_id, intake_path = hostile["offer_id"], hostile["intake_path"]

    # The form shown again with its errors keeps what was typed, as text
    assert_escaped(hostile["refused_form"], "the intake form shown again")
    # The worker's tracker and dashboard: the person's names and the agency's
    for path in (intake_path, f"{intake_path}/needs", "/", "/dashboard/needs"):
        assert_escaped(worker.http.get(path), path)
    assert "O&#39;Brien" in worker.http.get(intake_path).text

    # The agency's inbox: the offer (its county), then, once accepted, the person's name
    offer = inbox.http.get(f"/inbox/offers/{offer_id}")
    assert offer.status_code == 200 and "O&#39;Brien" in offer.text
    accepted = inbox.http.post(
        f"/inbox/offers/{offer_id}/accept", data={"csrf_token": inbox.csrf}, follow_redirects=True
    )
    assert accepted.status_code == 200, accepted.text

    def contact_page() -> httpx.Response | None:
        page = inbox.http.get(f"/inbox/offers/{offer_id}/contact")
        return page if page.status_code == 200 else None

    assert_escaped(eventually_sync(contact_page, "the contact details released"), "contact page")
    assert_escaped(worker.http.get(intake_path), "the tracker of the accepted need")

    # An admin's search for the person and their accounting of disclosures
    admin = WorkerBrowser(stack.intake_url)
    admin.log_in(*admin_account)
    search = admin.http.get("/admin/persons")
    found = admin.http.post(
        "/admin/persons",
        data={
            "given_name": person.legal_given_name,
            "family_name": person.legal_family_name,
            "date_of_birth": person.date_of_birth,
            "csrf_token": csrf_token(search.text),
        },
    )
    assert_escaped(found, "the person search")
    link = re.search(r'href="(/admin/persons/[0-9a-f-]{36}/disclosures)"', found.text)
    assert link, found.text
    disclosures = admin.http.get(link.group(1))
    assert_escaped(disclosures, "the accounting of disclosures")
    assert disclosures.text.count(ESCAPED) >= 2, "the person's name and the agency's"


def eventually_sync(check: Any, what: str, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.25)
    return result


# --- sessions -----------------------------------------------------------------------------


def test_an_old_or_forged_session_is_sent_to_the_login(
    stack: LocalStack, hostile: dict[str, Any], db: psycopg.Connection[Any]
) -> None:
    worker_row = db.execute(
        "SELECT worker_id FROM intake.workers WHERE email = %s", (DEMO_WORKER_EMAIL,)
    ).fetchone()
    user_row = db.execute(
        "SELECT user_id FROM notifications.agency_users WHERE email = %s",
        (hostile["inbox"].email,),
    ).fetchone()
    assert worker_row and user_row
    day = 24 * 3600
    cases = [
        # (base url, cookie name, secret, session, signed at, a page behind the login, login)
        (stack.intake_url, "refnet_session", stack.secrets["SECRET_KEY"],
         {"worker_id": str(worker_row[0])}, "/", "/login"),
        (stack.agency_api_url, "refnet_inbox", stack.secrets["INBOX_SECRET_KEY"],
         {"agency_user": str(user_row[0])}, "/inbox", "/inbox/login"),
    ]  # fmt: skip
    for base, cookie, secret, who, page, login in cases:
        now = time.time()
        fresh = sealed_cookie(secret, {**who, "login_at": now})
        logged_in_long_ago = sealed_cookie(secret, {**who, "login_at": now - 30 * day})
        signed_long_ago = sealed_cookie(secret, {**who, "login_at": now}, int(now) - 30 * day)
        forged = sealed_cookie("not-the-secret-" + "x" * 32, {**who, "login_at": now})
        with httpx.Client(base_url=base) as http:
            assert _lands_on(http, page, cookie, fresh) == page, "a current session is let in"
            for stale in (logged_in_long_ago, signed_long_ago, forged):
                assert _lands_on(http, page, cookie, stale) == login, (base, stale)


def _lands_on(http: httpx.Client, path: str, cookie: str, value: str) -> str:
    http.cookies.clear()
    http.cookies.set(cookie, value)
    response = http.get(path)
    assert response.status_code in (200, 303), response.status_code
    return response.headers["location"] if response.status_code == 303 else path


def test_logging_out_ends_the_session_even_for_a_copy_of_its_cookie(
    stack: LocalStack, hostile: dict[str, Any], admin_account: tuple[str, str]
) -> None:
    # An intake worker (not the demo worker: logging out ends all of one's sessions)
    browser = WorkerBrowser(stack.intake_url)
    browser.log_in(*admin_account)
    copy = browser.http.cookies["refnet_session"]
    token = csrf_token(browser.http.get("/").text)
    assert browser.http.post("/logout", data={"csrf_token": token}).url.path == "/login"
    assert browser.http.get("/").url.path == "/login"
    with httpx.Client(base_url=stack.intake_url) as replay:
        assert _lands_on(replay, "/", "refnet_session", copy) == "/login"
    assert browser.log_in(*admin_account).url.path == "/", "a new login is let in"

    # and someone at an agency
    inbox: Inbox = hostile["leaving"]
    copy = inbox.http.cookies["refnet_inbox"]
    left = inbox.http.post("/inbox/logout", data={"csrf_token": inbox.csrf}, follow_redirects=True)
    assert left.url.path == "/inbox/login"
    assert inbox.http.get("/inbox", follow_redirects=True).url.path == "/inbox/login"
    with httpx.Client(base_url=stack.agency_api_url) as replay:
        assert _lands_on(replay, "/inbox", "refnet_inbox", copy) == "/inbox/login"
    inbox.log_in()  # and a new login is let in
