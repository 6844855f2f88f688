"""HL7 v2 (ER7) reading and writing: escaping, timestamps, segments and acknowledgements.

Reading goes through `hl7` (python-hl7); anything it cannot make sense of becomes an
`Hl7Error`, which the gateway answers with a negative acknowledgement, never a crash.
Writing builds ER7 text from escaped fields, so no value can break the message structure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import hl7

LONDON = ZoneInfo("Europe/London")
SEGMENT_END = "\r"
ENCODING_CHARACTERS = "^~\\&"
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
# The version we write; TQ1 (timing) and ERR-2..8 need 2.5.
WRITE_VERSION = "2.5"

# HL7 table 0357 (message error condition codes): the ones the gateway answers with.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_VERSION = "203"
UNKNOWN_KEY = "204"
APPLICATION_ERROR = "207"
_ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_VERSION: "Unsupported version id",
    UNKNOWN_KEY: "Unknown key identifier",
    APPLICATION_ERROR: "Application internal error",
}


@dataclass(frozen=True)
class Problem:
    """One reason for a negative acknowledgement: where (`OBR-32`), an HL7 code, and what to fix.

    The text names the field, never its value: values may be patient data.
    """

    location: str
    code: str
    text: str

    def field_name(self) -> str:
        return self.location or "(message)"


class Hl7Error(ValueError):
    """The message cannot be read as HL7 v2 (answered AR)."""

    def __init__(self, text: str, location: str = "", code: str = SEGMENT_SEQUENCE_ERROR) -> None:
        super().__init__(text)
        self.problem = Problem(location=location, code=code, text=text)


# --------------------------------------------------------------------------- writing


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape(text: str) -> str:
    """A value as ER7 field text: delimiters escaped, line breaks as `\\.br\\`, controls dropped."""
    escaped = (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )
    escaped = escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\.br\\")
    return _CONTROL.sub("", escaped)


def components(*parts: str) -> str:
    """`a^b^c` from plain values, trailing empty components left out."""
    values = [escape(p) for p in parts]
    while values and not values[-1]:
        values.pop()
    return "^".join(values)


def segment(name: str, *fields: str) -> str:
    """One segment from already-composed fields (use `escape` / `components` on values)."""
    values = list(fields)
    while values and not values[-1]:
        values.pop()
    return "|".join([name, *values])


def message(segments: Iterable[str]) -> str:
    return SEGMENT_END.join(segments) + SEGMENT_END


def format_ts(moment: datetime) -> str:
    """An HL7 DTM in UTC with its offset, so that no receiver guesses the zone."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def msh(
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    at: datetime,
    message_type: tuple[str, str, str],
    control_id: str,
    version: str = WRITE_VERSION,
) -> str:
    # MSH-1 is the field separator itself, so MSH-2 is the first value after the name.
    return segment(
        "MSH",
        ENCODING_CHARACTERS,
        escape(sending_application),
        escape(sending_facility),
        escape(receiving_application),
        escape(receiving_facility),
        format_ts(at),
        "",
        components(*message_type),
        escape(control_id),
        "P",
        escape(version),
    )


# --------------------------------------------------------------------------- reading

_TS = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})(?P<h>\d{2})(?P<mi>\d{2})"
    r"(?P<s>\d{2}(?:\.\d{1,4})?)?(?P<tz>[+-]\d{4})?$"
)


def parse_ts(text: str, location: str, *, zone: ZoneInfo = LONDON) -> datetime:
    """An HL7 DTM (to the minute at least) as an aware UTC instant.

    Without an offset the time is read as `zone` wall time (a UK RIS sends local time).
    """
    match = _TS.match(text.strip())
    if match is None:
        raise Hl7Error(
            "not an HL7 date/time to the minute (YYYYMMDDHHMM[SS][+ZZZZ])",
            location,
            DATA_TYPE_ERROR,
        )
    seconds = float(match["s"] or 0)
    try:
        naive = datetime(
            int(match["y"]), int(match["mo"]), int(match["d"]), int(match["h"]), int(match["mi"])
        ) + timedelta(seconds=seconds)
    except ValueError:
        raise Hl7Error("not a valid calendar date/time", location, DATA_TYPE_ERROR) from None
    if match["tz"]:
        sign = 1 if match["tz"][0] == "+" else -1
        hours, minutes = int(match["tz"][1:3]), int(match["tz"][3:5])
        if hours > 14 or minutes > 59:
            raise Hl7Error("not a valid UTC offset", location, DATA_TYPE_ERROR)
        offset = timezone(sign * timedelta(hours=hours, minutes=minutes))
        return naive.replace(tzinfo=offset).astimezone(UTC)
    return naive.replace(tzinfo=zone).astimezone(UTC)


def _normalise(text: str) -> str:
    # Senders differ in segment terminators; ER7 wants CR alone.
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r") + "\r"


def _text(value: Any) -> str:
    text = str(value) if value is not None else ""
    # `\.br\` unescapes to CR; text reaches the pathway with LF line breaks.
    return text.replace("\r\n", "\n").replace("\r", "\n")


class SegmentView:
    """Read access to one segment's fields by HL7 position (`OBX-5` is `value(5)`)."""

    def __init__(self, segment: Any, name: str) -> None:
        self._segment = segment
        self.name = name

    def value(self, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """The unescaped value, or "" when absent."""
        try:
            return _text(self._segment.extract_field(1, field, rep, comp, sub)).strip()
        except (IndexError, KeyError, TypeError):
            return ""
        except Exception as error:  # the library's unescaping of hostile text
            raise Hl7Error(
                f"{self.name}-{field} cannot be read ({type(error).__name__})",
                f"{self.name}-{field}",
                DATA_TYPE_ERROR,
            ) from None

    def repetitions(self, field: int) -> int:
        try:
            if field >= len(self._segment):
                return 0
            content = self._segment[field]
        except (IndexError, TypeError):
            return 0
        if isinstance(content, str):
            return 1 if content else 0
        return len(content) if str(content) else 0

    def values(self, field: int, comp: int = 1) -> list[str]:
        """Every repetition's component `comp`, in order (blank ones kept)."""
        return [self.value(field, rep, comp) for rep in range(1, self.repetitions(field) + 1)]


class Parsed:
    """A parsed HL7 v2 message: segments in order, MSH fields, safe value access."""

    def __init__(self, raw: Any, text: str) -> None:
        self.text = text
        self._segments: list[SegmentView] = []
        for seg in raw:
            try:
                name = str(seg[0][0]) if not isinstance(seg[0], str) else seg[0]
            except (IndexError, TypeError):
                raise Hl7Error("a segment has no name", "", SEGMENT_SEQUENCE_ERROR) from None
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
                raise Hl7Error(
                    "a segment name is not three letters or digits", "", SEGMENT_SEQUENCE_ERROR
                )
            self._segments.append(SegmentView(seg, name))
        if not self._segments or self._segments[0].name != "MSH":
            raise Hl7Error("a message starts with an MSH segment", "MSH", SEGMENT_SEQUENCE_ERROR)
        # python-hl7 reads a header cut short after MSH-2 as something else: check it read back.
        if not self.msh.value(2).startswith(ENCODING_CHARACTERS):
            raise Hl7Error("MSH-2 must be the encoding characters ^~\\&", "MSH-2", DATA_TYPE_ERROR)

    @property
    def msh(self) -> SegmentView:
        return self._segments[0]

    def segments(self, name: str | None = None) -> list[SegmentView]:
        return [s for s in self._segments if name is None or s.name == name]

    def first(self, name: str) -> SegmentView | None:
        return next((s for s in self._segments if s.name == name), None)

    @property
    def control_id(self) -> str:
        return self.msh.value(10)

    @property
    def message_type(self) -> tuple[str, str]:
        return self.msh.value(9, 1, 1).upper(), self.msh.value(9, 1, 2).upper()

    @property
    def version(self) -> str:
        return self.msh.value(12)


def parse(text: str) -> Parsed:
    """Parse one message; Hl7Error (AR) for anything that is not a readable HL7 v2 message."""
    body = _normalise(text)
    if not body.startswith("MSH"):
        raise Hl7Error("a message starts with an MSH segment", "MSH", SEGMENT_SEQUENCE_ERROR)
    if len(body) < 8 or body[3] != "|" or body[4:8] != ENCODING_CHARACTERS:
        raise Hl7Error(
            "MSH-1 must be | and MSH-2 the encoding characters ^~\\&", "MSH-2", DATA_TYPE_ERROR
        )
    try:
        raw = hl7.parse(body)
    except Exception as error:  # python-hl7 raises assorted errors on broken input
        raise Hl7Error(
            f"the message cannot be parsed ({type(error).__name__})", "", SEGMENT_SEQUENCE_ERROR
        ) from None
    return Parsed(raw, body)


# --------------------------------------------------------------------------- acknowledgements


def err_segment(problem: Problem, severity: str = "E") -> str:
    """ERR (v2.5): ERR-2 location, ERR-3 code (table 0357), ERR-4 severity, ERR-8 user message."""
    location = ""
    match = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?", problem.location)
    if match:
        location = components(match[1], "1", match[2], "1", match[3] or "")
    elif re.fullmatch(r"[A-Z][A-Z0-9]{2}", problem.location):
        location = components(problem.location, "1")
    return segment(
        "ERR",
        "",
        location,
        components(problem.code, _ERROR_TEXT.get(problem.code, ""), "HL70357"),
        severity,
        "",
        "",
        "",
        escape(problem.text[:250]),
    )


def acknowledgement(
    original: Parsed | None,
    code: str,
    *,
    control_id: str,
    at: datetime,
    application: str,
    facility: str,
    problems: Sequence[Problem] = (),
    text: str = "",
) -> str:
    """An ACK to `original` (or to an unreadable message: MSA-2 empty)."""
    if original is not None:
        receiving_application = original.msh.value(3)
        receiving_facility = original.msh.value(4)
        trigger = original.message_type[1]
        version = original.version if original.version in SUPPORTED_VERSIONS else WRITE_VERSION
        acknowledged = original.control_id
    else:
        receiving_application = receiving_facility = trigger = ""
        version, acknowledged = WRITE_VERSION, ""
    segments = [
        msh(
            sending_application=application,
            sending_facility=facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
            at=at,
            message_type=("ACK", trigger, "ACK"),
            control_id=control_id,
            version=version,
        ),
        segment("MSA", code, escape(acknowledged), escape(text[:80])),
    ]
    segments += [err_segment(p) for p in problems]
    return message(segments)
