"""The request bodies of /v1/completions and /v1/chat/completions as pydantic models.

Unknown fields are forbidden (a typo such as "max_token" would otherwise be ignored silently), and numbers
and booleans are strict: "max_tokens": true or "n": "2" is a client bug to report, not something to guess at.
"""
from __future__ import annotations

from typing import Any, Literal

from zhgpt.apps.serve.config import MAX_N

try:  # the [serve] extra; without it `zhgpt serve --help` still works and main() says what to install
    from pydantic import BaseModel, ConfigDict, Field
except ImportError:  # pragma: no cover - exercised only without the extra
    BaseModel, ConfigDict = object, dict

    def Field(default=None, **_):   # noqa: N802 - stands in for pydantic.Field
        return default


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, strict=True)


class SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    top_p: float | None = Field(None, gt=0, le=1, strict=True)
    top_k: int | None = Field(None, ge=0, strict=True)
    n: int = Field(1, ge=1, le=MAX_N, strict=True)
    stop: str | list[str] | None = None
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=2 ** 63 - 1, strict=True)
    repetition_penalty: float | None = Field(None, gt=0, le=10, strict=True)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=True)
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=True)
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=64, strict=True)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = Field(False, strict=True)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, strict=True)
    logprobs: int | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")      # name, tool_call_id ... are carried, not used
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
