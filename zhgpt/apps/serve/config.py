"""`zhgpt serve`'s settings: the command-line flags (ServeConfig) and the fixed limits on what a request may ask."""
from __future__ import annotations

import os
from dataclasses import dataclass

from zhgpt.config import opt
from zhgpt.errors import ZhgptError
from zhgpt.inference.loading import ModelOptions

MAX_BODY_BYTES = 4 << 20       # 4 MiB: ~1M Chinese characters, far beyond any context; stops memory abuse
MAX_CHOICES = 64               # prompts x n per request
MAX_N = 16                     # sequences per prompt
MAX_STOP = 4                   # OpenAI's limit on stop strings
MAX_STOP_CHARS = 256           # each stop string is searched for after every token: keep that cheap
CHAT_MAX_TOKENS = 256          # default max_tokens for chat when the request gives none
COMPLETION_MAX_TOKENS = 16     # OpenAI's default for /v1/completions


@dataclass
class ServeConfig(ModelOptions):
    """`zhgpt serve`: its own fields below; which model and how to run it come from ModelOptions."""
    host: str = opt("127.0.0.1", "address to bind; 127.0.0.1 = this machine only (0.0.0.0 exposes the API to "
                                 "the network: set --api-key then)")
    port: int = opt(8000, "TCP port (0 = any free port, printed at start)")
    api_key: str = opt("", "require 'Authorization: Bearer KEY' on /v1/* (empty = no auth; the environment "
                           "variable ZHGPT_API_KEY is used when this is empty, which keeps the key out of `ps`)")
    model_name: str = opt("", "model id shown by /v1/models and accepted in requests (default: the folder's name)")
    max_tokens_limit: int = opt(0, "largest max_tokens a request may ask for (0 = the model's context length)")
    max_queue: int = opt(64, "requests allowed to wait for the generation worker; more are answered 429")
    max_batch: int = opt(16, "most sequences generated together in one batched forward (requests with the same "
                             "prompt and settings are merged)")
    log_level: str = opt("info", "uvicorn log level", choices=("critical", "error", "warning", "info", "debug"))

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ZhgptError(f"--port must be 0..65535, got {self.port}")
        if self.max_queue < 1:
            raise ZhgptError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.max_batch < 1:
            raise ZhgptError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_tokens_limit < 0:
            raise ZhgptError(f"--max-tokens-limit must be >= 0 (0 = the context length), got {self.max_tokens_limit}")

    def effective_api_key(self) -> str:
        """--api-key, else $ZHGPT_API_KEY; empty = no auth."""
        return self.api_key or os.environ.get("ZHGPT_API_KEY", "")
