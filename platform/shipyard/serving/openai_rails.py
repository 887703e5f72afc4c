"""The deployment's guardrails (``shipyard.apps.guardrails``) on the OpenAI routes.

Input rails read every user message (chat) or text prompt (completions) before anything else: a block is
a 400 naming the rail (``code: guardrail_<rail>``), a redaction rewrites the text the model sees. Output
rails read each choice's text: a block cuts it before the offending segment with finish_reason
``content_filter``, streamed or not. Source rails run on retrieved chunks inside ``RagClient``. What the
rails found (never the values) is the body's ``guardrails`` extension and ``shipyard_guardrail_total``.
"""

from __future__ import annotations

import dataclasses

from shipyard.serving.openai_errors import error


def runs(rails, where: str) -> bool:
    """Whether the deployment has rails (``rails`` may be None) at ``where``: input, output or sources."""
    return rails is not None and rails.runs_at(where)


def load_rails(path: str | None):
    """The rails of ``--guardrails PATH`` (its ``guardrails:`` section: a profile will do), or None."""
    if not path:
        return None
    from shipyard.apps.guardrails import Rails, RailsConfig
    from shipyard.schema import load_section

    return Rails(load_section(path, "guardrails", RailsConfig))


def refuse_logprobs(rails, req):
    if runs(rails, "output") and req.top_logprobs_asked() is not None:
        return error(400, "logprobs: not with output guardrails on this server (the text they score may be "
                          "redacted)", "logprobs")
    return None


def guard_input(rails, req):
    """(the request as the model may see it, findings) or (None, the 400) when an input rail blocks it."""
    if not runs(rails, "input"):
        return req, []
    findings = []
    if hasattr(req, "messages"):  # chat
        messages = []
        for m in req.messages:
            if m.role == "user":
                got = rails.check(m.as_template_input()["content"], "input")
                findings.extend(got.findings)
                if got.blocked:
                    return None, _blocked(got.blocked, "messages", findings)
                m = m.model_copy(update={"content": got.text})
            messages.append(m)
        return req.model_copy(update={"messages": messages}), _counted(findings)
    if isinstance(req.prompt, list) and req.prompt and not all(isinstance(p, str) for p in req.prompt):
        return req, []  # token ids: nothing to read as text
    prompts = []
    for p in [req.prompt] if isinstance(req.prompt, str) else req.prompt:
        got = rails.check(p, "input")
        findings.extend(got.findings)
        if got.blocked:
            return None, _blocked(got.blocked, "prompt", findings)
        prompts.append(got.text)
    return req.model_copy(update={"prompt": prompts[0] if isinstance(req.prompt, str) else prompts}), \
        _counted(findings)


def _counted(findings):
    from shipyard.serving.metrics import count_rails

    count_rails(findings)
    return findings


def _blocked(rail: str, param: str, findings):
    _counted(findings)
    return error(400, f"{param}: blocked by the {rail} guardrail", param, code=f"guardrail_{rail}")


def _railed(g, text: str, blocked: str | None):
    """A generation as its output rails let it through: their text, and ``content_filter`` when one blocked."""
    return dataclasses.replace(g, text=text, finish_reason="content_filter" if blocked else g.finish_reason)


def guard_output(rails, gens: list) -> tuple[list, list]:
    """The finished choices through the output rails, and what they found."""
    if not runs(rails, "output"):
        return gens, []
    out, findings = [], []
    for g in gens:
        got = rails.check(g.text, "output")
        findings.extend(got.findings)
        out.append(_railed(g, got.text, got.blocked))
    return out, _counted(findings)


def extension(findings) -> dict:
    return {"guardrails": [f.as_dict() for f in findings]} if findings else {}


class StreamRails:
    """A stream's choices through the output rails, text held back until its segment ends; ``found``: what
    the input rails found (reported on the first choice's last chunk)."""

    def __init__(self, rails, n: int, found=()):
        from shipyard.apps.guardrails import OutputRails

        self.rails, self.found = rails, list(found)
        self.active = runs(rails, "output")
        self.choices = [OutputRails(rails) for _ in range(n)] if self.active else []

    def feed(self, i: int, text: str) -> str:
        return self.choices[i].feed(text) if self.active else text

    def finish(self, i: int, g, whole: bool = False):
        """(the rest of choice i's text, its generation as railed, the extension) once it is done; ``whole``:
        nothing was fed (a shape that sends its text at the end)."""
        found = self.found if i == 0 else []
        if not self.active:
            return "", g, extension(found)
        if whole:
            (g,), more = guard_output(self.rails, [g])
            return "", g, extension([*found, *more])
        rail = self.choices[i]
        rest = rail.finish()
        _counted(rail.findings)
        return rest, _railed(g, rail.text(), rail.blocked), extension([*found, *rail.findings])
