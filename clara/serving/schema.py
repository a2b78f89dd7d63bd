"""Request and response models of the retrieval server (published in /openapi.json).

Limits that depend on the server's settings (k_max, queries per request, text length) are
baked into the models by :func:`make_schemas`, so FastAPI validation rejects them with 422
and the OpenAPI schema states them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_WAIT_MS = 1000.0  # a batch never holds a request longer than this for company


@dataclass(frozen=True)
class ServerSettings:
    k_max: int = 20
    default_k: int = 5
    default_topk: int = 3  # /retrieve (Search-R1) when the request gives no topk
    max_queries: int = 64  # queries per request
    max_query_chars: int = 4096
    max_new_tokens: int = 256
    default_new_tokens: int = 32
    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue_size: int = 256
    max_body_bytes: int = 1 << 20

    def __post_init__(self):
        from clara.errors import ConfigError

        for name in ("k_max", "default_k", "default_topk", "max_queries", "max_query_chars", "max_new_tokens",
                     "max_batch", "queue_size", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server setting {name}={getattr(self, name)} must be at least 1")
        if not 0.0 <= self.max_wait_ms <= MAX_WAIT_MS:  # NaN fails too; inf would never answer a lone request
            raise ConfigError(f"server setting max_wait_ms={self.max_wait_ms} must be between 0 and {MAX_WAIT_MS:g} ms")
        if not (self.default_k <= self.k_max and self.default_topk <= self.k_max):
            raise ConfigError(f"default k ({self.default_k}, topk {self.default_topk}) must be <= k_max={self.k_max}")


class ErrorBody(BaseModel):
    code: int
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Hit(BaseModel):
    id: str
    title: str
    text: str
    score: float


class Source(BaseModel):
    id: str
    title: str
    score: float


class RetrieveResponse(BaseModel):
    results: list[list[Hit]]


class AnswerResponse(BaseModel):
    answer: str
    sources: list[Source]


class FlashDocument(BaseModel):
    id: str
    contents: str = Field(description="title, a newline, then the passage text")


class FlashHit(BaseModel):
    document: FlashDocument
    score: float


class FlashResponse(BaseModel):
    result: Union[list[list[FlashHit]], list[list[FlashDocument]]]


class HealthResponse(BaseModel):
    status: str
    bank: Optional[dict] = None
    model: Optional[dict] = None
    queues: Optional[dict] = None


FLOAT32_MAX = 3.4028234663852886e38


def make_schemas(s: ServerSettings) -> SimpleNamespace:
    """Request models with this server's limits."""
    Query = Annotated[str, Field(min_length=1, max_length=s.max_query_chars)]
    Queries = Annotated[list[Query], Field(min_length=1, max_length=s.max_queries)]
    # strict: "5" and true are not numbers; vectors stay inside float32 (1e308 would become inf there)
    K = Annotated[int, Field(ge=1, le=s.k_max, strict=True, description=f"documents per query, 1..{s.k_max}")]
    Value = Annotated[float, Field(allow_inf_nan=False, strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]

    class RetrieveRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: Optional[Queries] = Field(None, description="questions, encoded by the query reasoner")
        embeddings: Optional[list[list[Value]]] = Field(
            None, max_length=s.max_queries,
            description="query vectors instead of text: each of the bank's retrieval dimension (see /health)",
        )
        k: K = s.default_k

        @model_validator(mode="after")
        def one_kind_of_query(self):
            if (self.queries is None) == (self.embeddings is None):
                raise ValueError("give exactly one of 'queries' (text) or 'embeddings' (vectors)")
            if self.embeddings is not None and not self.embeddings:
                raise ValueError("'embeddings' must not be empty")
            return self

    class AnswerRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: Query
        k: K = s.default_k
        max_new_tokens: Annotated[int, Field(ge=1, le=s.max_new_tokens, strict=True)] = s.default_new_tokens

    class FlashRequest(BaseModel):
        # Search-R1 / FlashRAG clients send exactly these; unknown keys are ignored as they are there
        queries: Queries
        topk: Optional[K] = None
        return_scores: bool = False

    return SimpleNamespace(RetrieveRequest=RetrieveRequest, AnswerRequest=AnswerRequest, FlashRequest=FlashRequest)
