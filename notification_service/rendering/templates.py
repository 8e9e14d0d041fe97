"""Jinja2 rendering of e-mail and push content per event, channel and locale.

Files live in ``templates/<locale>/<event>.<channel>.<part>``; a locale such
as ``de-AT`` falls back to ``de`` and then ``en``. Times are shown in the
booking's own timezone. HTML templates are autoescaped.
"""

from __future__ import annotations

import functools
import pathlib
import zoneinfo
from datetime import datetime

import jinja2

from notification_service.errors import PermanentError

TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "templates"
DEFAULT_LOCALE = "en"
#: Formats per locale for the date/time filters.
FORMATS = {
    "en": {"date": "%a %d %b %Y", "time": "%H:%M", "datetime": "%a %d %b %Y %H:%M"},
    "de": {"date": "%d.%m.%Y", "time": "%H:%M", "datetime": "%d.%m.%Y %H:%M Uhr"},
}
EMAIL_PARTS = ("subject.txt", "txt", "html")
PUSH_PARTS = ("title.txt", "body.txt")


def locale_chain(locale: str | None) -> list[str]:
    """``de-AT`` → ``["de-AT", "de", "en"]`` (no duplicates)."""
    chain: list[str] = []
    if locale:
        parts = locale.split("-")
        for i in range(len(parts), 0, -1):
            chain.append("-".join(parts[:i]))
    chain.append(DEFAULT_LOCALE)
    return list(dict.fromkeys(chain))


def _time_filter(kind: str):
    # Reads timezone and formats from the render context: filters are shared by
    # every thread of the pool, so nothing per-message may live on the environment.
    @jinja2.pass_context
    def _filter(context, value: datetime | None) -> str:
        if value is None:
            return ""
        return value.astimezone(context["_tz"]).strftime(context["_formats"][kind])

    return _filter


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        auto_reload=False,  # templates ship with the package: no stat() per render
    )
    env.filters.update({kind: _time_filter(kind) for kind in ("date", "time", "datetime")})
    return env


def _resolve(env: jinja2.Environment, locale: str | None, event: str, channel: str,
             part: str) -> tuple[jinja2.Template, str]:
    for candidate in locale_chain(locale):
        try:
            return env.get_template(f"{candidate}/{event}.{channel}.{part}"), candidate
        except jinja2.TemplateNotFound:
            continue
    raise PermanentError(f"no template for {event}.{channel}.{part}")


def render(message: dict, channel: str) -> dict[str, str]:
    """Render every part of ``channel`` for a loaded notification message.

    Raises PermanentError on a missing template or a rendering error.
    """
    env = environment()
    booking = message["booking"]
    tz = zoneinfo.ZoneInfo(booking["timezone"])
    event = message["event"].value if hasattr(message["event"], "value") else str(message["event"])
    locale = message["recipient"].get("locale") or DEFAULT_LOCALE
    parts = EMAIL_PARTS if channel == "email" else PUSH_PARTS
    rendered: dict[str, str] = {}
    for part in parts:
        template, used = _resolve(env, locale, event, channel, part)
        fmt = FORMATS.get(used.split("-")[0], FORMATS[DEFAULT_LOCALE])
        context = {
            "booking": booking,
            "recipient": message["recipient"],
            "event": event,
            "starts_at": booking["starts_at"],
            "ends_at": booking["ends_at"],
            "previous_starts_at": booking.get("previous_starts_at"),
            "_tz": tz,
            "_formats": fmt,
        }
        try:
            rendered[part.split(".")[0]] = template.render(context).strip()
        except jinja2.TemplateError as exc:
            raise PermanentError(f"template {template.name} failed: {exc}") from exc
    return rendered
