"""Writes the published contract under docs/contract/, generated from the code:

- ``asyncapi.json``: every topic, its messages, key, headers and parties (shared/contract.py);
- ``schemas/<ce_type>.json``: one JSON Schema per event payload;
- ``agency-openapi.json``: the agency HTTP API, from the notifications app.

``python -m services.contract`` rewrites them; ``python -m services.contract --check`` writes
nothing and exits 1 naming each file that differs from what the code generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from services.notifications.app import create_app
from services.notifications.settings import NotificationsSettings
from shared.clock import SystemClock
from shared.contract import asyncapi_document, event_json_schemas

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_DIR = ROOT / "docs" / "contract"
SCHEMAS = "schemas"
COMMAND = "python -m services.contract"


class _OfflineSettings(NotificationsSettings):
    """Settings read from the arguments only, never the environment or a secrets file, so
    the generated document is the same wherever it is generated."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def agency_openapi() -> dict[str, Any]:
    """The notifications app's OpenAPI. Building the app connects to nothing (its lifespan
    does, and openapi() never runs it); every required setting gets a placeholder."""
    placeholder = "unused-placeholder-" * 3  # long enough for any secret's minimum length
    required = {n: placeholder for n, f in _OfflineSettings.model_fields.items() if f.is_required()}
    settings = _OfflineSettings(**required)  # type: ignore[arg-type]
    return create_app(settings, clock=SystemClock()).openapi()


def documents() -> dict[str, dict[str, Any]]:
    """Every generated document by its path under docs/contract/."""
    docs = {"asyncapi.json": asyncapi_document(), "agency-openapi.json": agency_openapi()}
    for ce_type, schema in event_json_schemas().items():
        docs[f"{SCHEMAS}/{ce_type}.json"] = schema
    return docs


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _stale(root: Path, expected: dict[str, Any]) -> list[str]:
    """Schema files no model generates any more (an event renamed or removed)."""
    folder = root / SCHEMAS
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [f"{SCHEMAS}/{p.name}" for p in found if f"{SCHEMAS}/{p.name}" not in expected]


def differences(root: Path = CONTRACT_DIR) -> dict[str, str]:
    """What is wrong with the files under ``root``, by path: missing, out of date, or no
    longer generated (an event renamed or removed)."""
    expected = documents()
    found: dict[str, str] = {}
    for name, doc in expected.items():
        path = root / name
        if not path.is_file():
            found[name] = "is missing"
        elif path.read_text(encoding="utf-8") != render(doc):
            found[name] = "differs from what the code generates"
    for name in _stale(root, expected):
        found[name] = "is no longer generated"
    return dict(sorted(found.items()))


def write(root: Path = CONTRACT_DIR) -> dict[str, str]:
    """Bring the files under ``root`` up to date; returns what it did, by path."""
    expected = documents()
    done: dict[str, str] = {}
    for name, doc in expected.items():
        path, text = root / name, render(doc)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        done[name] = "wrote"
    for name in _stale(root, expected):
        (root / name).unlink()
        done[name] = "removed"
    return dict(sorted(done.items()))


def _shown(root: Path, name: str) -> str:
    path = root / name
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Write the published contract under docs/contract/."
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file differs"
    )
    parser.add_argument("--dir", type=Path, default=CONTRACT_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.dir.resolve()
    if args.check:
        problems = differences(root)
        for name, problem in problems.items():
            sys.stderr.write(f"{_shown(root, name)} {problem}\n")
        if problems:
            sys.stderr.write(f"run `{COMMAND}` to regenerate the contract\n")
        return 1 if problems else 0
    done = write(root)
    for name, action in done.items():
        sys.stdout.write(f"{action} {_shown(root, name)}\n")
    if not done:
        sys.stdout.write(f"{_shown(root, '')} is up to date\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
