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

# every setting's range: a flag outside it is refused at start-up (NaN too), so no value can make the server
# wait forever, refuse everything, or promise more memory than a machine has
BOUNDS = {
    "k_max": (1, 1024, ""), "default_k": (1, 1024, ""), "default_topk": (1, 1024, ""),
    "max_queries": (1, 4096, ""), "max_query_chars": (1, 1 << 20, ""), "max_new_tokens": (1, 8192, ""),
    "default_new_tokens": (1, 8192, ""), "max_batch": (1, 1024, ""), "max_wait_ms": (0.0, MAX_WAIT_MS, " ms"),
    "queue_size": (1, 1 << 16, ""), "max_body_bytes": (1, 1 << 30, " bytes"), "work_budget": (1, 1 << 20, ""),
    "body_timeout_s": (0.01, 3600.0, " s"), "drain_s": (0.0, 3600.0, " s"), "reload_s": (0.0, 86400.0, " s"),
}


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
    # the most work one /v1/answer may ask for, in token positions of the generator's sequence: question
    # tokens + k × m memory slots + max_new_tokens (its prompt's cost grows with the square of it)
    work_budget: int = 4096
    body_timeout_s: float = 30.0  # a request body must arrive whole within this, else 408
    drain_s: float = 10.0  # after SIGTERM, in-flight requests get this long to finish, then 503 and exit
    reload_s: float = 5.0  # how often BANK/manifest.json is checked for a bank that changed; 0 = never

    def __post_init__(self):
        from clara.errors import ConfigError

        for name, (least, most, unit) in BOUNDS.items():
            value = getattr(self, name)
            if not least <= value <= most:  # NaN fails too; inf max_wait_ms would never answer a lone request
                shown = [f"{b:g}" if isinstance(b, float) else str(b) for b in (least, most)]
                raise ConfigError(f"server setting {name}={value} must be between {shown[0]} and {shown[1]}{unit}")
        if not (self.default_k <= self.k_max and self.default_topk <= self.k_max):
            raise ConfigError(f"default k ({self.default_k}, topk {self.default_topk}) must be <= k_max={self.k_max}")
        if 0 < self.reload_s < 0.1:
            raise ConfigError(f"server setting reload_s={self.reload_s} must be 0 (never) or at least 0.1 s")
        if self.default_new_tokens > self.max_new_tokens:
            raise ConfigError(f"default_new_tokens={self.default_new_tokens} must be <= max_new_tokens={self.max_new_tokens}")


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
    work_budget: Optional[int] = None
    retrievals_between_answer_steps: Optional[int] = None


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
