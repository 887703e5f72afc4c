"""Document chains and conversation memory: what each chain asks the model, in what order, and the bounds
of the memory. The model is a script of replies (``test_reasoning.Script``'s idea), the prompts are the real ones."""

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.apps.chains import map_reduce, refine, stuff
from shipyard.apps.memory import ConversationMemory, MemoryLimits
from shipyard.apps.reasoning import Reply

DOCS = [("faq.md", "Python lists are mutable."), ("faq.md", "Tuples are immutable."), ("x.md", "Cats purr.")]


class Script:
    """Replies chosen by a function of the user's text (map calls run in parallel, so order is not fixed)."""

    def __init__(self, reply):
        self.reply, self.asked, self.lock = reply, [], threading.Lock()

    def __call__(self, messages, max_tokens, stop):
        with self.lock:
            self.asked.append(messages[-1]["content"])
        return Reply(self.reply(messages[-1]["content"]), prompt_tokens=10, completion_tokens=3)


def test_stuff_puts_every_document_in_one_prompt():
    chat = Script(lambda text: " Lists are mutable [1]. ")
    out = stuff(chat, "Are lists mutable?", DOCS)
    assert out.answer == "Lists are mutable [1]." and out.calls == 1 and out.prompt_tokens == 10
    (prompt,) = chat.asked
    assert "[1] Python lists are mutable." in prompt and "[3] Cats purr." in prompt
    assert prompt.endswith("Question: Are lists mutable?")
    assert [s.kind for s in out.steps] == ["answer"]


def test_refine_sees_one_document_per_call_and_carries_the_draft():
    drafts = iter(["Lists are mutable.", "Lists are mutable; tuples are not.", ""])
    chat = Script(lambda text: next(drafts))
    seen = []
    out = refine(chat, "What is mutable?", DOCS, on_step=seen.append)
    assert out.calls == 3 and out.answer == "Lists are mutable; tuples are not."  # an empty revision keeps it
    assert "Tuples are immutable." in chat.asked[1] and "Current answer: Lists are mutable." in chat.asked[1]
    assert "Cats purr." in chat.asked[2] and "Cats" not in chat.asked[1]
    assert [s.kind for s in seen] == ["draft"] * 3 and seen == out.steps


def test_map_reduce_drops_documents_with_nothing_and_reduces_the_rest():
    def reply(text):
        if text.startswith("Notes:"):
            return "Lists [1] are mutable and tuples [2] are not."
        return "NONE." if "Cats" in text else text.split("\n")[1]

    chat = Script(reply)
    out = map_reduce(chat, "What is mutable?", DOCS, parallel=3)
    assert out.calls == 4 and out.completion_tokens == 12
    reduce_prompt = chat.asked[-1]
    assert "[1] Python lists are mutable." in reduce_prompt and "[2] Tuples are immutable." in reduce_prompt
    assert "Cats" not in reduce_prompt and "[3]" not in reduce_prompt
    assert [s.kind for s in out.steps] == ["extract"] * 3 + ["answer"]
    none = map_reduce(Script(lambda text: "NONE"), "What is mutable?", DOCS)
    assert none.answer == "" and "no document" in none.error and none.calls == 3


def test_chains_without_documents_say_so_without_calling_the_model():
    chat = Script(lambda text: "x")
    for chain in (stuff, refine, map_reduce):
        out = chain(chat, "q", [])
        assert out.error and "no documents" in out.error and out.calls == 0
    assert chat.asked == []


def test_memory_is_per_tenant_bounded_and_expires():
    now = [0.0]
    mem = ConversationMemory(MemoryLimits(max_turns=2, max_chars=10, max_conversations=2, max_tenants=2, ttl_s=60),
                             clock=lambda: now[0])
    for i in range(3):
        mem.remember("acme", "c1", f"q{i}", f"a{i}")
    assert [m["content"] for m in mem.history("acme", "c1")] == ["q1", "a1", "q2", "a2"]
    assert mem.history("globex", "c1") == []  # same id, other tenant: another conversation
    mem.remember("acme", "c1", "x" * 50, "y" * 50)
    assert [len(m["content"]) for m in mem.history("acme", "c1")[-2:]] == [10, 10]
    mem.remember("acme", "c2", "q", "a")
    mem.remember("acme", "c3", "q", "a")  # the least recently used (c1) is forgotten
    assert mem.history("acme", "c1") == [] and mem.size() == 2
    mem.remember("globex", "c1", "q", "a")
    mem.remember("initech", "c1", "q", "a")  # a third tenant: the least recent (acme) goes
    assert mem.history("acme", "c2") == [] and mem.size() == 2
    now[0] = 61
    assert mem.history("globex", "c1") == []
    mem.remember("globex", "c1", "new", "start")
    assert [m["content"] for m in mem.history("globex", "c1")] == ["new", "start"]
    assert mem.forget("globex", "c1") and not mem.forget("globex", "c1")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2", "3", "4"]),
                          st.text(max_size=30)), max_size=60))
def test_memory_never_exceeds_its_bounds(ops):
    lim = MemoryLimits(max_turns=3, max_chars=8, max_conversations=2, max_tenants=2)
    mem = ConversationMemory(lim)
    for tenant, conv, text in ops:
        mem.remember(tenant, conv, text, text[::-1])
        history = mem.history(tenant, conv)
        assert history[-2:] == [{"role": "user", "content": text[-8:]},
                                {"role": "assistant", "content": text[::-1][:8]}]
        assert len(history) <= 2 * lim.max_turns
    assert mem.size() <= lim.max_conversations * lim.max_tenants
