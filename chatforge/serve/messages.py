"""OpenAI chat messages -> a chatforge conversation and its prompt, fitted to the context.

What clients send is looser than the conversation schema (dev/DESIGN.md), so it is normalized here,
as pure functions the server and the tests share:

* ``developer`` is ``system`` (OpenAI's newer name); every system/developer text joins the one system
  prompt at the front (the format has a single leading system message).
* ``assistant`` content may be null, a string, or parts (text, and chatforge's own ``tool_call`` /
  ``tool_output`` parts, so the web UI can send a reply back as it came); OpenAI ``tool_calls`` become
  ``tool_call`` parts (input = the function's arguments string).
* ``tool`` (a tool's result) becomes a ``tool_output`` part of the assistant message before it.
* Consecutive messages of one role merge (user texts joined by a newline), as the format alternates.
* The prompt ends after a user message (a new assistant turn) or, when the conversation ends in a
  tool result, inside that assistant turn (the model continues after the output).

``fit_prompt`` trims a long conversation from its oldest exchanges (a user message and the replies
up to the next one), always keeping the system prompt and the last exchange, until the prompt leaves
``room`` tokens for the reply. Exchanges are rendered one at a time: rendering is per message (special
tokens delimit messages, so no BPE merge crosses them), hence the lengths add up exactly.
"""
from __future__ import annotations

from typing import Any

from chatforge.common import CfError
from chatforge.tokenizer.tokenizer import validate_conversation


def _text(content: Any, where: str) -> str:
    """A system/user message's text: a string or text parts (anything else is refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for j, p in enumerate(content):
        if p.get("type") != "text":
            raise CfError(f"{where}.content[{j}].type: only 'text' parts are allowed here, got {p.get('type')!r}")
        out.append(p["text"])
    return "".join(out)


def _assistant_parts(m: dict, where: str) -> list[dict]:
    content = m.get("content")
    parts: list[dict] = []
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}] if content else []
    elif content is not None:
        for p in content:
            keys = ("name", "input") if p["type"] == "tool_call" else ("text",)
            parts.append({"type": p["type"], **{k: p.get(k) or "" for k in keys}})
    for j, call in enumerate(m.get("tool_calls") or []):
        fn = call["function"]
        if not fn.get("name") or "\n" in fn["name"]:
            raise CfError(f"{where}.tool_calls[{j}].function.name: expected a tool name without newlines")
        parts.append({"type": "tool_call", "name": fn["name"], "input": fn.get("arguments") or ""})
    return parts


def conversation_from_messages(messages: list[dict]) -> dict:
    """OpenAI-style message dicts -> {"messages": [...]} in the conversation schema (see module doc)."""
    system: list[str] = []
    out: list[dict] = []
    for i, m in enumerate(messages):
        where, role = f"messages[{i}]", m.get("role")
        if role in ("system", "developer"):
            system.append(_text(m.get("content"), where))
        elif role == "user":
            text = _text(m.get("content"), where)
            if out and out[-1]["role"] == "user":
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text})
        elif role == "assistant":
            parts = _assistant_parts(m, where)
            if out and out[-1]["role"] == "assistant":
                out[-1]["content"] += parts
            else:
                out.append({"role": "assistant", "content": parts})
        elif role == "tool":
            if not out or out[-1]["role"] != "assistant":
                raise CfError(f"{where}.role: a 'tool' message must follow an assistant message (its tool call)")
            out[-1]["content"].append({"type": "tool_output", "text": _text(m.get("content"), where)})
        else:
            raise CfError(f"{where}.role: unknown role {role!r}; expected system|developer|user|assistant|tool")
    for m in out:   # plain replies stay strings (the common case, and what parse_reply returns)
        if m["role"] == "assistant" and all(p["type"] == "text" for p in m["content"]):
            m["content"] = "".join(p["text"] for p in m["content"])
    sys_text = "\n\n".join(t for t in system if t)
    conv = {"messages": ([{"role": "system", "content": sys_text}] if sys_text else []) + out}
    if not out:
        raise CfError("messages: expected at least one user message")
    validate_conversation(conv, "messages")
    last = out[-1]
    continues = last["role"] == "assistant" and isinstance(last["content"], list) and last["content"] \
        and last["content"][-1]["type"] == "tool_output"
    if last["role"] != "user" and not continues:
        raise CfError("messages: the last message must be from the user (or a tool result to continue from)")
    return conv


def exchanges(conv: dict) -> tuple[list[dict], list[list[dict]]]:
    """(system messages, exchanges): each exchange is a user message and what follows up to the next."""
    msgs = conv["messages"]
    system = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
    groups: list[list[dict]] = []
    for m in msgs[len(system):]:
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(m)
    return system, groups


def render_prompt(tok: Any, conv: dict) -> list[int]:
    """Prompt ids: a new assistant turn after a user message, or the open assistant turn after a tool result."""
    if conv["messages"][-1]["role"] == "user":
        return tok.render_for_completion(conv)
    ids, _ = tok.render_conversation(conv)
    return ids[:-1]     # drop <|assistant_end|>: the model continues its turn after the tool output


def fit_prompt(tok: Any, conv: dict, seq_len: int, room: int) -> tuple[list[int], int]:
    """(prompt ids, messages dropped): the oldest exchanges go until prompt + room <= seq_len (or only
    the system prompt and the last exchange are left; the caller reports a prompt that still won't fit)."""
    system, groups = exchanges(conv)
    head = len(tok.render_conversation({"messages": system})[0]) if system else 1   # <|bos|> + system
    lengths = [len(tok.render_conversation({"messages": system + g})[0]) - head for g in groups]
    tail = 1 if conv["messages"][-1]["role"] == "user" else -1   # + <|assistant_start|> / - <|assistant_end|>
    first = 0
    while first < len(groups) - 1 and head + sum(lengths[first:]) + tail + room > seq_len:
        first += 1
    kept = {"messages": system + [m for g in groups[first:] for m in g]}
    dropped = sum(len(g) for g in groups[:first])
    return render_prompt(tok, kept), dropped


def best_assistant(results: dict, names: list[str]) -> str | None:
    """The stage the chat should start with: "rl" if it beat SFT in results.json's "rl" experiment
    (conditions grpo vs sft: the paired difference's interval above 0, else the higher rate), else "sft";
    whichever of the two is served; None when neither is."""
    if "rl" in names and "sft" in names:
        exp = results.get("rl") or {}
        cond, diff = exp.get("conditions") or {}, (exp.get("diffs") or {}).get("grpo - sft")
        try:
            if diff is not None:
                beat = float(diff["ci"][0]) > 0
            else:
                beat = float(cond["grpo"]["rate"]) > float(cond["sft"]["rate"])
        except (KeyError, TypeError, ValueError, IndexError):
            beat = False
        return "rl" if beat else "sft"
    return "sft" if "sft" in names else ("rl" if "rl" in names else None)
