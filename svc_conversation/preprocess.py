"""The layer before the primary model: deterministic safety heuristics and the pre-SLM.

The heuristics need no model and always run: prompt-injection markers, and personal data
(e-mail addresses, phone numbers, payment card numbers that pass the Luhn check, IBANs),
which :func:`redact` removes from anything logged. The pre-SLM (the PRE_SLM role) then
extracts an intent and slots as structured output. Its screening is recorded on the turn,
and an injection attempt is refused (when the deployment says so) before any model sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from svc_conversation.model import Screening

_INJECTION_MARKERS = [
    r"ignore (all |any )?(the )?(previous|prior|above|earlier) (instructions|prompts?|rules)",
    r"disregard (all |any )?(the )?(previous|prior|above|system) (instructions|prompts?|rules)",
    r"forget (all |everything )?(you were told|your instructions|the rules)",
    r"(reveal|print|show|repeat) (me )?(your|the) (system prompt|hidden instructions|instructions verbatim)",
    r"you are now (in )?(developer|dan|jailbreak|god) mode",
    r"\bjailbreak\b",
    r"<\|im_start\|>\s*system",
    r"^\s*system\s*:",
    r"act as if you have no (restrictions|rules|guidelines)",
]
_INJECTION = re.compile("|".join(f"(?:{m})" for m in _INJECTION_MARKERS), re.IGNORECASE | re.MULTILINE)

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ()./-]{7,}\d(?!\w)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")

PROMPT_INJECTION = "PROMPT_INJECTION"
PII = "PII"

# What the pre-SLM must answer: structured output under this schema.
INTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,39}$"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "slots": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 80},
            "maxProperties": 4,
        },
    },
    "required": ["intent", "confidence", "slots"],
    "additionalProperties": False,
}

INTENT_PROMPT = (
    "Classify the user's message. Answer with one JSON object: "
    '{"intent": "<lower_snake_case label>", "confidence": <0..1>, "slots": {"<name>": "<value>"}}. '
    "Slots are the facts the message gives (dates, names, amounts)."
)


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _cards(text: str) -> list[re.Match[str]]:
    found = []
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            found.append(match)
    return found


def _phones(text: str) -> list[re.Match[str]]:
    found = []
    for match in _PHONE.finditer(text):
        if _DATE.fullmatch(match.group()):
            continue
        if 9 <= len(re.sub(r"\D", "", match.group())) <= 15:
            found.append(match)
    return found


def has_injection(text: str) -> bool:
    return _INJECTION.search(text) is not None


def has_pii(text: str) -> bool:
    return bool(_EMAIL.search(text) or _cards(text) or _IBAN.search(text) or _phones(text))


def redact(text: str) -> str:
    """``text`` with personal data replaced by placeholders, for logs."""
    for match in sorted(_cards(text), key=lambda m: m.start(), reverse=True):
        text = text[: match.start()] + "[card]" + text[match.end() :]
    text = _EMAIL.sub("[email]", text)
    text = _IBAN.sub("[iban]", text)
    for match in sorted(_phones(text), key=lambda m: m.start(), reverse=True):
        text = text[: match.start()] + "[phone]" + text[match.end() :]
    return text


def heuristics(text: str, *, refuse_injection: bool) -> Screening:
    """The screening of ``text`` by the heuristics alone."""
    flags = []
    if has_injection(text):
        flags.append(PROMPT_INJECTION)
    if has_pii(text):
        flags.append(PII)
    refused = refuse_injection and PROMPT_INJECTION in flags
    return Screening(flags=tuple(flags), refused=refused, refusal_reason=PROMPT_INJECTION if refused else "")


def with_intent(screening: Screening, reply: str) -> Screening:
    """``screening`` plus what the pre-SLM answered (ignored when it is not the asked shape)."""
    try:
        value = json.loads(reply)
    except ValueError:
        return screening
    if not isinstance(value, Mapping):
        return screening
    intent = value.get("intent")
    confidence = value.get("confidence")
    slots = value.get("slots")
    if not isinstance(intent, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", intent):
        return screening
    if not isinstance(confidence, int | float) or not 0 <= float(confidence) <= 1:
        confidence = 0.0
    clean_slots = (
        {str(k)[:40]: str(v)[:80] for k, v in list(slots.items())[:4] if isinstance(v, str)}
        if isinstance(slots, Mapping)
        else {}
    )
    return replace(screening, intent=intent, intent_confidence=float(confidence), slots=clean_slots)


REFUSAL_TEXT = {
    PROMPT_INJECTION: (
        "I can't act on this message: it contains instructions that try to override my "
        "configuration. Please rephrase your request."
    ),
}
