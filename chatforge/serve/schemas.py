"""The API's wire format: OpenAI-shaped errors and the pydantic request models with their validation.

Every request model forbids unknown fields (``_Strict``), so a typo answers 400 naming the field; the
standard OpenAI fields chatforge has no use for are declared with the ``IGNORED`` description, accepted,
and named in a ``Warning`` response header (``ignored_fields``, ``warning_headers``). Checks pydantic
cannot express (stop strings, ``logit_bias`` keys against the vocabulary) raise ``ApiError`` here too,
so routes only ever raise one exception type, answered as ``{"error": {message, type, param, code}}``.
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_N = 8                 # choices per request
MAX_STOP = 4              # stop strings per request (as OpenAI)
MAX_TOP_LOGPROBS = 20
MAX_BIAS = 300           # logit_bias entries (as OpenAI)
MAX_TEXT = 1_000_000      # characters of one prompt / message / tokenize text


# ----------------------------------------------------------------------------- errors

class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 503)}


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if param is None:
        return f"The request body must be a JSON object with the documented fields ({e.get('msg', 'invalid')}).", None
    if e.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: expected a JSON object.", None
    if e.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if e.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    return f"Invalid value for '{param}': {e.get('msg', 'invalid')}.", param


# ----------------------------------------------------------------------------- request schemas

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Any = None


IGNORED = "accepted for compatibility and ignored (named in the response's Warning header)"


class SamplingParams(_Strict):
    model: str = Field(max_length=200)
    max_tokens: int | None = Field(None, ge=1, le=2**31, description="tokens to generate (prompt + this <= context)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="chatforge extension; 0 or null = off")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} stop strings")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="minus this once for every token already generated")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="minus this times a token's count so far")
    logit_bias: dict[str, float] | None = Field(None, description=f"token id -> bias in [-100, 100], at most {MAX_BIAS}")
    store: Any = Field(None, description=IGNORED)
    metadata: Any = Field(None, description=IGNORED)
    service_tier: Any = Field(None, description=IGNORED)


class CompletionRequest(SamplingParams):
    prompt: str | list[int] = Field(max_length=MAX_TEXT, description="text, or token ids")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="top candidates per token")
    echo: Literal[False] = False
    best_of: Any = Field(None, description=IGNORED)
    suffix: Any = Field(None, description=IGNORED)


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class ToolCallPart(_Strict):
    """chatforge extension: a tool call the assistant made (as streamed in ``delta.parts``)."""
    type: Literal["tool_call"]
    name: str = Field(max_length=64)
    input: str = Field(max_length=MAX_TEXT)


class ToolOutputPart(_Strict):
    """chatforge extension: what the tool returned."""
    type: Literal["tool_output"]
    text: str = Field(max_length=MAX_TEXT)


class FunctionCall(_Strict):
    name: str = Field(max_length=64)
    arguments: str = Field("", max_length=MAX_TEXT)


class ToolCall(_Strict):
    id: str | None = Field(None, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ToolCallPart | ToolOutputPart] | None = Field(None, max_length=MAX_TEXT)
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=200)


class ChatRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: Any = Field(None, description=IGNORED + "; the server runs its own tools")
    tool_choice: Any = Field(None, description=IGNORED)
    parallel_tool_calls: Any = Field(None, description=IGNORED)
    functions: Any = Field(None, description=IGNORED)
    function_call: Any = Field(None, description=IGNORED)
    modalities: Any = Field(None, description=IGNORED)
    audio: Any = Field(None, description=IGNORED)
    prediction: Any = Field(None, description=IGNORED)
    reasoning_effort: Any = Field(None, description=IGNORED)
    web_search_options: Any = Field(None, description=IGNORED)


class TokenizeRequest(_Strict):
    model: str = Field(max_length=200)
    text: str = Field(max_length=MAX_TEXT)
    allow_special: bool = Field(False, description="parse <|...|> special tokens in the text")


class BattleRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=20_000)
    max_tokens: int | None = Field(256, ge=1, le=4096)
    temperature: float | None = Field(0.7, ge=0.0, le=2.0)


class VoteRequest(_Strict):
    battle_id: str = Field(max_length=64)
    winner: Literal["a", "b", "tie", "both_bad"]


def ignored_fields(body: BaseModel) -> list[str]:
    """The accepted-but-ignored fields a request set (for the Warning header)."""
    out = [f for f, info in type(body).model_fields.items()
           if info.description and info.description.startswith(IGNORED) and f in body.model_fields_set]
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.type != "text":
        out.append(f"response_format.type={fmt.type} (not enforced)")
    return out


def warning_headers(ignored: list[str], trimmed: int = 0) -> dict[str, str]:
    h = {"Warning": f'299 chatforge "ignored: {", ".join(ignored)}"'} if ignored else {}
    if trimmed:
        h["X-Chatforge-Trimmed-Messages"] = str(trimmed)
    return h


# ----------------------------------------------------------------------------- checks pydantic cannot express

def parse_stop(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"Invalid value for 'stop': at most {MAX_STOP} stop strings, got {len(stops)}.", "stop")
    if any(not s for s in stops):
        raise ApiError(400, "Invalid value for 'stop': stop strings must be non-empty.", "stop")
    return stops


def parse_logit_bias(bias: dict[str, float] | None, n_vocab: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for k, v in (bias or {}).items():
        if not k.isdigit() or not 0 <= int(k) < n_vocab or not -100 <= v <= 100:
            raise ApiError(400, f"Invalid value for 'logit_bias': keys are token ids in 0..{n_vocab - 1}, "
                                f"values in [-100, 100]; got {k!r}: {v!r}.", "logit_bias")
        out[int(k)] = float(v)
    if len(out) > MAX_BIAS:
        raise ApiError(400, f"Invalid value for 'logit_bias': at most {MAX_BIAS} entries.", "logit_bias")
    return out
