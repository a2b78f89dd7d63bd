"""The `openai` teacher: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp).

Standard library only (urllib). Each request has a timeout; 429, 5xx, connection errors and
timeouts are retried with exponential backoff (honouring ``Retry-After``); other 4xx are
errors at once. Several documents run at once (``workers``), and a semaphore caps the
requests in flight. The API key comes from an environment variable, never the command line.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request

from clara.errors import ClaraError, ConfigError
from clara.pretrain.prompt_teachers import PromptTeacher

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class TeacherError(ClaraError):
    """The endpoint kept failing after all retries (the document is retried on the next run)."""


class ChatClient:
    """A minimal, thread-safe client for ``POST {base_url}/chat/completions``."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0, concurrency: int = 4):  # fmt: skip
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url {base_url!r}: must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._slots = threading.Semaphore(max(1, concurrency))
        self.requests = 0  # attempts, including retries (for tests and logs)
        self.retries = 0
        self._count = threading.Lock()

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._slots, urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff, self.backoff * (2**attempt)) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = min(self.max_backoff, max(delay, float(retry_after)))
            except ValueError:
                pass
        return delay

    def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int = 512) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": temperature,
                           "max_tokens": max_tokens}).encode("utf-8")  # fmt: skip
        last = ""
        for attempt in range(self.max_retries + 1):
            with self._count:
                self.requests += 1
                self.retries += attempt > 0
            retry_after = None
            try:
                reply = self._post(body)
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                if e.code not in RETRY_STATUS:
                    raise TeacherError(f"{self.url}: HTTP {e.code} ({detail.strip()}); check --model and the API key") from None
                last, retry_after = f"HTTP {e.code}", e.headers.get("Retry-After")
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, TypeError, ValueError) as e:
                last = f"malformed reply ({type(e).__name__})"
            if attempt < self.max_retries:
                delay = self._wait(attempt, retry_after)
                log.debug("%s: %s; retry %d in %.2fs", self.url, last, attempt + 1, delay)
                time.sleep(delay)
        raise TeacherError(f"{self.url}: failed after {self.max_retries + 1} attempts ({last}); is the server up?")


class OpenAITeacher(PromptTeacher):
    """Prompts an OpenAI-compatible chat endpoint; ``workers`` documents run concurrently."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", workers: int = 4,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.5, max_new_tokens: int = 512):  # fmt: skip
        if workers < 1:
            raise ConfigError(f"--workers {workers}: must be at least 1")
        self.workers = workers
        self.max_new_tokens = max_new_tokens
        self.client = ChatClient(base_url, model, api_key=os.environ.get(api_key_env), timeout=timeout,
                                 max_retries=max_retries, backoff=backoff, concurrency=workers)  # fmt: skip

    def complete(self, messages: list[dict], temperature: float = 0.0) -> str:
        return self.client.chat(messages, temperature=temperature, max_tokens=self.max_new_tokens)
