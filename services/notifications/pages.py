"""The pages behind one-click links: the person's aftercare check-in and the agency's
outcome request. The signed token in the address is the credential.

A GET only shows the choices; the answer is a POST, so a mail scanner that opens links
cannot answer for the person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from services.notifications.handlers import Deps, LinkAnswer, LinkRefused, answer_link
from services.notifications.links import CHECK_IN, Link, LinkExpired, LinkInvalid
from shared.events import OUTCOME_LABELS, CheckInAnswer, Outcome

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates" / "pages")

CHECK_IN_TEXT = {
    "en": {
        "title": "How is it going?",
        "ask": "Tell us how things are going with the agency that is helping you.",
        "choices": {
            CheckInAnswer.CONNECTED: "I'm connected",
            CheckInAnswer.NEED_HELP: "I need help",
            CheckInAnswer.STOP: "Stop reminders",
        },
        "note": "Your answer goes to your intake worker. This link works once.",
        "thanks": {
            CheckInAnswer.CONNECTED: "Thank you. We're glad you are connected.",
            CheckInAnswer.NEED_HELP: "Thank you. Your intake worker will be in touch soon.",
            CheckInAnswer.STOP: "Done: you will get no more check-in reminders for this.",
        },
        "used": "This check-in was already answered. Thank you.",
        "expired": "This link has expired. Your intake worker can help you.",
        "invalid": "This link is not valid. Your intake worker can help you.",
    },
    "es": {
        "title": "¿Cómo le va?",
        "ask": "Cuéntenos cómo le va con la agencia que le está ayudando.",
        "choices": {
            CheckInAnswer.CONNECTED: "Estoy en contacto",
            CheckInAnswer.NEED_HELP: "Necesito ayuda",
            CheckInAnswer.STOP: "No más recordatorios",
        },
        "note": "Su respuesta llega a su trabajador de admisión. Este enlace funciona una vez.",
        "thanks": {
            CheckInAnswer.CONNECTED: "Gracias. Nos alegra que esté en contacto.",
            CheckInAnswer.NEED_HELP: "Gracias. Su trabajador de admisión se comunicará pronto.",
            CheckInAnswer.STOP: "Listo: no recibirá más recordatorios sobre esto.",
        },
        "used": "Este seguimiento ya fue respondido. Gracias.",
        "expired": "Este enlace venció. Su trabajador de admisión puede ayudarle.",
        "invalid": "Este enlace no es válido. Su trabajador de admisión puede ayudarle.",
    },
}


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def _page(
    request: Request,
    status: int,
    lang: str,
    title: str,
    *lines: str,
    choices: list[tuple[str, str]] | None = None,
    note: str = "",
) -> HTMLResponse:
    context = {"lang": lang, "title": title, "lines": lines, "choices": choices, "note": note}
    return templates.TemplateResponse(request, "link.html", context, status_code=status)


def _read(request: Request, token: str) -> Link | HTMLResponse:
    try:
        return _deps(request).links.read(token)
    except LinkExpired:
        return _page(
            request,
            410,
            "en",
            "Link expired",
            CHECK_IN_TEXT["en"]["expired"],
            CHECK_IN_TEXT["es"]["expired"],
        )
    except LinkInvalid:
        return _page(
            request,
            404,
            "en",
            "Link not valid",
            CHECK_IN_TEXT["en"]["invalid"],
            CHECK_IN_TEXT["es"]["invalid"],
        )


@router.get("/l/{token}", response_class=HTMLResponse)
async def show_link(request: Request, token: str) -> HTMLResponse:
    link = _read(request, token)
    if isinstance(link, HTMLResponse):
        return link
    if link.purpose == CHECK_IN:
        text = CHECK_IN_TEXT[link.language]
        choices = [(a.value, label) for a, label in text["choices"].items()]
        return _page(
            request,
            200,
            link.language,
            text["title"],
            text["ask"],
            choices=choices,
            note=text["note"],
        )
    choices = [(o.value, OUTCOME_LABELS[o]) for o in Outcome]
    return _page(
        request,
        200,
        "en",
        "How did this referral end?",
        f"Referral {link.need_id}: choose the outcome for the person you accepted.",
        choices=choices,
        note="The outcome closes the referral. This link works once.",
    )


@router.post("/l/{token}", response_class=HTMLResponse)
async def answer(request: Request, token: str, answer: Annotated[str, Form()]) -> HTMLResponse:
    link = _read(request, token)
    if isinstance(link, HTMLResponse):
        return link
    try:
        result, standing = await answer_link(_deps(request), link, answer)
    except ValueError:
        return _page(
            request,
            422,
            link.language,
            "Choose one of the answers",
            "Please go back and choose one of the answers offered.",
        )
    except LinkRefused as refused:
        return _page(request, 409, "en", "Outcome not recorded", str(refused))
    if link.purpose == CHECK_IN:
        text = CHECK_IN_TEXT[link.language]
        if result == LinkAnswer.ALREADY_USED:
            return _page(request, 409, link.language, text["title"], text["used"])
        return _page(
            request, 200, link.language, text["title"], text["thanks"][CheckInAnswer(standing)]
        )
    if result == LinkAnswer.ALREADY_USED:
        return _page(
            request,
            409,
            "en",
            "Outcome already recorded",
            f"This referral's outcome was already recorded: {OUTCOME_LABELS[Outcome(standing)]}.",
        )
    return _page(
        request,
        200,
        "en",
        "Outcome recorded",
        f"Recorded: {OUTCOME_LABELS[Outcome(standing)]}. Thank you.",
    )
