"""svc_conversation's core: its use cases over its ports (see conversation.py)."""

from svc_conversation.core.conversation import Conversation
from svc_conversation.errors import StreamClosed

__all__ = ["Conversation", "StreamClosed"]
