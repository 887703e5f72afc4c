"""Conversation memory: the earlier turns of a conversation, keyed by (tenant, conversation id), bounded.

A request that names a conversation gets that conversation's last ``max_turns`` exchanges put before
its own messages, and its question and answer are remembered after it. Bounds, so no client can grow
the server: ``max_turns`` exchanges per conversation, ``max_chars`` per remembered text (cut at the
end), ``max_conversations`` per tenant and ``max_tenants`` tenants (the least recently used is forgotten),
and ``ttl_s`` idle seconds. Tenants never see each other's conversations: the same id under two tenants is two
conversations.

The store is the process's memory: a replica restart forgets, and two replicas do not share it
(route a conversation to one replica, e.g. by session affinity on the id).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

CONVERSATION_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


@dataclass(frozen=True)
class MemoryLimits:
    max_turns: int = 8
    max_chars: int = 4000
    max_conversations: int = 1000
    max_tenants: int = 100
    ttl_s: float = 3600.0


class ConversationMemory:
    def __init__(self, limits: MemoryLimits | None = None, clock=time.monotonic):
        self.limits, self.clock = limits or MemoryLimits(), clock
        self._tenants: OrderedDict[str, OrderedDict[str, tuple[float, list[tuple[str, str]]]]] = OrderedDict()
        self._lock = threading.Lock()

    def history(self, tenant: str, conversation: str) -> list[dict[str, str]]:
        """The remembered exchanges as chat messages, oldest first ([] for a new or expired conversation)."""
        with self._lock:
            convs = self._tenants.get(tenant)
            found = convs.get(conversation) if convs else None
            if found is None or self.clock() - found[0] > self.limits.ttl_s:
                return []
            return [m for user, assistant in found[1]
                    for m in ({"role": "user", "content": user}, {"role": "assistant", "content": assistant})]

    def remember(self, tenant: str, conversation: str, user: str, assistant: str) -> None:
        lim, now = self.limits, self.clock()
        with self._lock:
            convs = self._tenants.pop(tenant, None) or OrderedDict()
            self._tenants[tenant] = convs
            while len(self._tenants) > lim.max_tenants:
                self._tenants.popitem(last=False)
            stamp, turns = convs.pop(conversation, (now, []))
            if now - stamp > lim.ttl_s:
                turns = []
            turns = [*turns, (user[-lim.max_chars:], assistant[:lim.max_chars])][-lim.max_turns:]
            convs[conversation] = (now, turns)
            while len(convs) > lim.max_conversations:
                convs.popitem(last=False)
            self._expire(convs, now)

    def forget(self, tenant: str, conversation: str) -> bool:
        with self._lock:
            return self._tenants.get(tenant, {}).pop(conversation, None) is not None

    def size(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._tenants.values())

    def _expire(self, convs: OrderedDict, now: float) -> None:
        """Drop idle conversations from the least recently used end (so the work per call stays small)."""
        while convs:
            oldest = next(iter(convs))
            if now - convs[oldest][0] <= self.limits.ttl_s:
                return
            del convs[oldest]
