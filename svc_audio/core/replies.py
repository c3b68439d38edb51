"""The words of an agent's reply as its tokens stream, for speaking while the model writes.

The agent loop's model writes each reply as one JSON object (Agent Zero's tool call, see
svc_conversation's toolcall.py):

    {"thoughts": ["..."], "tool_name": "response", "tool_args": {"text": "Paris is ..."}}

Only a `response` call's `text` is the answer; thoughts and other tools' calls are not to be
spoken. `ReplyText` reads the raw tokens of one model call as they come and hands out the
answer's characters as soon as they are decoded (JSON escapes resolved), so the first sentence
can be synthesised before the model has finished writing it. A reply that is not such an object
gives nothing here; the final response, which the session always carries, is spoken instead.
"""

from __future__ import annotations

import contextlib
import json
import re

_RESPONSE = re.compile(r'"tool_name"\s*:\s*"response"')
_TEXT = re.compile(r'"tool_args"\s*:\s*\{\s*"text"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "", "f": "", "n": "\n", "r": " ", "t": " "}


class ReplyText:
    """The answer text inside one model call's streaming JSON reply."""

    def __init__(self) -> None:
        self._raw = ""
        self._at = -1  # where the text's characters start in `_raw`, once found
        self._done = False

    def push(self, token: str) -> str:
        """The answer's characters that `token` completes ("" when none)."""
        self._raw += token
        if self._done:
            return ""
        if self._at < 0:
            response = _RESPONSE.search(self._raw)
            text = _TEXT.search(self._raw, response.end()) if response else None
            if text is None:
                return ""
            self._at = text.end()
        return self._decode()

    def _decode(self) -> str:
        out = []
        i = self._at
        while i < len(self._raw):
            char = self._raw[i]
            if char == '"':
                self._done = True
                i += 1
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            if i + 1 >= len(self._raw):
                break  # the escape's second character has not arrived yet
            kind = self._raw[i + 1]
            if kind == "u":
                # A character outside the BMP comes as two escapes (a surrogate pair).
                width = 12 if self._raw[i + 2 : i + 4].lower() in ("d8", "d9", "da", "db") else 6
                if i + width > len(self._raw):
                    break
                with contextlib.suppress(ValueError):  # not a character: nothing to speak
                    out.append(json.loads(f'"{self._raw[i : i + width]}"'))
                i += width
                continue
            out.append(_ESCAPES.get(kind, kind))
            i += 2
        self._at = i
        return "".join(out)
