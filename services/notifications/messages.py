"""What each message says: text templates per language beside this module (templates/en,
templates/es), the first line of each being its subject."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from shared.events import CATEGORY_LABELS, DeclineReason, NeedCategory, Outcome

TEMPLATES = Path(__file__).parent / "templates"
LANGUAGES = ("en", "es")  # languages the person-facing templates are written in
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    undefined=StrictUndefined,
    autoescape=False,  # noqa: S701 - plain text (email and SMS), never HTML
    keep_trailing_newline=True,
)

CATEGORY_LABELS_ES: dict[NeedCategory, str] = {
    NeedCategory.PEER_SUPPORT: "grupo de apoyo entre pares",
    NeedCategory.RECOVERY_COACHING: "acompañamiento en la recuperación",
    NeedCategory.COUNSELING: "consejería y terapia",
    NeedCategory.CASE_MANAGEMENT: "manejo de casos",
    NeedCategory.EMPLOYMENT: "empleo",
    NeedCategory.INTERVIEW_COACHING: "preparación para entrevistas",
    NeedCategory.CHILD_CARE: "cuidado infantil",
    NeedCategory.CLOTHING: "ropa",
    NeedCategory.TRANSPORTATION: "transporte",
    NeedCategory.HOUSING: "vivienda / vivienda sobria",
    NeedCategory.MEDICAL_CARE: "atención médica",
    NeedCategory.MENTAL_HEALTH: "salud mental",
    NeedCategory.AFTERCARE: "programa de seguimiento",
    NeedCategory.FAMILY_SUPPORT: "apoyo familiar",
}
DECLINE_LABELS = {
    DeclineReason.NO_CAPACITY: "no room right now",
    DeclineReason.NOT_ELIGIBLE: "the person is not eligible for this service",
    DeclineReason.CANT_REACH: "the agency can't reach the person",
    DeclineReason.OTHER: "another reason",
}


@dataclass(frozen=True)
class Text:
    subject: str
    body: str


def language_for(languages: list[str] | tuple[str, ...]) -> str:
    """The first of the person's languages that we write in; English otherwise."""
    return next((lang for lang in languages if lang in LANGUAGES), "en")


def category_label(category: str, language: str = "en") -> str:
    labels = CATEGORY_LABELS_ES if language == "es" else CATEGORY_LABELS
    return labels[NeedCategory(category)]


def reason_label(reason: str | None) -> str:
    if reason in DeclineReason.__members__.values():
        return DECLINE_LABELS[DeclineReason(reason)]
    if reason in Outcome.__members__.values():
        return Outcome(reason).label
    return reason or "no reason given"


def render(template: str, language: str = "en", **context: Any) -> Text:
    source = _env.get_template(f"{language}/{template}.txt").render(**context)
    first, _, body = source.partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"template {language}/{template} must start with 'Subject: '")
    return Text(first.removeprefix("Subject: ").strip(), body.lstrip("\n"))
