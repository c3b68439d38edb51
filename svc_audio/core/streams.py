"""The browser pair: a voice stream opened by StreamVoiceEvents, fed by PushAudio calls that
may land on any svc_audio replica.

The replica that runs the stream claims its name in the shared directory (refreshed while the
stream lives); a PushAudio that reaches another replica is relayed to the holder, marked as
relayed so it is never relayed twice. Chunks carry a sequence from 1: one already accepted is
acknowledged and ignored (a retry), one that skips ahead is refused with the sequence
expected, so the client resends from there; nothing reaches the recogniser twice or out of
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from skm_runtime.access import Principal
from svc_audio.core.speech import check_chunk
from svc_audio.core.voice import VoiceConversations
from svc_audio.errors import AudioAfterEnd, AudioChunkTooLarge, AudioSequenceGap, VoiceStreamNotFound
from svc_audio.model import MAX_CHUNK_BYTES, AudioFormat, ClientMessage, VoiceOutput, VoiceSetup
from svc_audio.ports import Relay, StreamDirectory

_NAME = re.compile(r"^(tenants/[^/]+)/sessions/[^/]+/voiceStreams/[0-9a-f-]{36}$")

_NAME = re.compile(r"^(tenants/[^/]+)/sessions/[^/]+/voiceStreams/[0-9a-f-]{36}$")


class _Feed:
    """A local voice stream's input: chunks in sequence order."""

    def __init__(self, tenant: str, fmt: AudioFormat) -> None:
        self.tenant = tenant
        self.format = fmt
        self.accepted = 0
        self.ended = False
        self.queue: asyncio.Queue[ClientMessage | None] = asyncio.Queue()

    def push(self, sequence: int, audio: bytes, last: bool) -> int:
        if sequence <= self.accepted:
            return self.accepted  # a retry of what is in already
        if self.ended:
            raise AudioAfterEnd("the stream's input already ended", metadata={"accepted_sequence": str(self.accepted)})
        if sequence != self.accepted + 1:
            raise AudioSequenceGap(
                "a chunk is missing before this one", metadata={"expected_sequence": str(self.accepted + 1)}
            )
        if audio or not last:
            check_chunk(audio, self.format)
        self.accepted = sequence
        if audio:
            self.queue.put_nowait(ClientMessage(audio=audio))
        if last:
            self.ended = True
            self.queue.put_nowait(None)
        return self.accepted

    async def messages(self) -> AsyncIterator[ClientMessage]:
        while (message := await self.queue.get()) is not None:
            yield message


class VoiceStreams:
    """Voice streams of the browser pair held by this replica, and the relay to the others."""

    def __init__(
        self,
        voices: VoiceConversations,
        directory: StreamDirectory,
        relay: Relay,
        address: str,
        *,
        claim_seconds: float = 30.0,
    ) -> None:
        self._voices = voices
        self._directory = directory
        self._relay = relay
        self._address = address
        self._claim_seconds = claim_seconds
        self._local: dict[str, _Feed] = {}

    async def open(self, principal: Principal, session: str, setup: VoiceSetup) -> AsyncIterator[VoiceOutput]:
        """StreamVoiceEvents: opens the stream here and runs it as long as the caller reads."""
        call = await self._voices.open(principal, session, setup)
        feed = _Feed(principal.tenant, call.input_format)
        self._local[call.name] = feed
        await self._directory.claim(call.name, self._address, self._claim_seconds)
        keeper = asyncio.get_running_loop().create_task(self._keep_claim(call.name), name=f"claim {call.name}")
        try:
            async for output in call.run(feed.messages()):
                yield output
        finally:
            self._local.pop(call.name, None)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(Exception):
                await self._directory.release(call.name)

    async def push(
        self, principal: Principal, voice_stream: str, sequence: int, audio: bytes, last: bool, *, relayed: bool
    ) -> int:
        """PushAudio: the highest sequence accepted."""
        match = _NAME.match(voice_stream)
        if match is None or match.group(1) != principal.tenant:
            raise VoiceStreamNotFound("no such voice stream", metadata={"voice_stream": voice_stream[:300]})
        if len(audio) > MAX_CHUNK_BYTES:
            raise AudioChunkTooLarge(
                "a message may carry at most 32 KiB of audio", metadata={"limit_bytes": str(MAX_CHUNK_BYTES)}
            )
        feed = self._local.get(voice_stream)
        if feed is not None:
            return feed.push(sequence, audio, last)
        holder = None if relayed else await self._directory.holder(voice_stream)
        if holder is None or holder == self._address:
            raise VoiceStreamNotFound(
                "no such voice stream, or it has ended", metadata={"voice_stream": voice_stream[:300]}
            )
        return await self._relay.push(holder, principal, voice_stream, sequence, audio, last)

    async def _keep_claim(self, name: str) -> None:
        while True:
            await asyncio.sleep(self._claim_seconds / 3)
            with contextlib.suppress(Exception):
                await self._directory.claim(name, self._address, self._claim_seconds)
