"""The latent-space retrieval server (DESIGN §9): FastAPI over a memory bank and a model.

Endpoints: ``GET /health`` (503 until model and bank are loaded), ``POST /v1/retrieve``,
``POST /v1/answer`` and ``POST /retrieve`` (Search-R1 / FlashRAG retriever protocol).
Requests are micro-batched (:mod:`clara.serving.batcher`) through the query reasoner, the bank
search and the generator. Every error is JSON ``{"error": {"code", "type", "message"}}``:
413 body too large, 422 bad schema / k out of range / wrong vector dimension, 429 queue
full, 503 not ready, 500 model failure.
"""

# no `from __future__ import annotations`: FastAPI resolves the request models (locals) at runtime

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clara.errors import CheckpointError
from clara.serving.bank import MemoryBank
from clara.serving.batcher import MicroBatcher, QueueFull
from clara.serving.protocols import compressor_hash
from clara.serving.schema import (
    AnswerResponse,
    ErrorResponse,
    FlashResponse,
    HealthResponse,
    RetrieveResponse,
    ServerSettings,
    make_schemas,
)

log = logging.getLogger(__name__)

ERROR_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               422: "validation_error", 429: "queue_full", 500: "internal_error", 503: "not_ready"}


def error_response(code: int, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": code, "type": ERROR_TYPES.get(code, "error"), "message": message}}
    return JSONResponse(body, status_code=code, headers=headers)


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def check_compatible(model, bank: MemoryBank) -> None:
    """Refuse a bank written by another compressor: its memory means nothing to this model."""
    ours = compressor_hash(model)
    if ours != bank.info.compressor_hash:
        raise CheckpointError(
            f"{bank.directory}: bank was built by compressor {bank.info.compressor_hash} but the loaded model's "
            f"compressor is {ours}; rebuild the bank with this model (`clara index build`) or serve the matching model"
        )
    if (model.num_mem, model.hidden_size) != (bank.info.num_mem, bank.info.hidden_size):
        raise CheckpointError(f"{bank.directory}: bank m={bank.info.num_mem}, H={bank.info.hidden_size} but model "
                              f"m={model.num_mem}, H={model.hidden_size}")


# uvicorn drains an unread body after an early response and keeps the connection; closing it
# instead made clients that were still uploading see resets (load test: 392 of 416 lost).
# Only an absurd declared size gets the connection closed rather than drained.
DRAIN_FACTOR = 64


class BodyLimit:
    """ASGI middleware: 413 when Content-Length or the bytes actually sent exceed the limit.

    The body is read here (at most limit + one chunk) and replayed to the app, so a client
    that lies about, or omits, Content-Length is caught too.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"request body exceeds {self.max_bytes} bytes; send fewer or shorter queries"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await error_response(400, "Content-Length is not an integer")(scope, receive, send)
            if size > self.max_bytes:
                close = {"Connection": "close"} if size > DRAIN_FACTOR * self.max_bytes else None
                return await error_response(413, too_big, headers=close)(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await error_response(413, too_big)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Service:
    """Model + bank + batchers; the batch functions run in the single model thread."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.model = None
        self.bank: MemoryBank | None = None
        self.prompt = "direct"  # the generator's recorded prompt form, set by install()
        self.error: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clara-model")
        kw = dict(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size)
        self.retriever = MicroBatcher("retrieve", self._retrieve_batch, self.executor, **kw)
        self.answerer = MicroBatcher("answer", self._answer_batch, self.executor, **kw)

    @property
    def ready(self) -> bool:
        return self.model is not None and self.bank is not None

    def install(self, model, bank: MemoryBank) -> None:
        from clara.model.prompts import resolve_prompt

        check_compatible(model, bank)
        self.model, self.bank = model, bank
        self.prompt = resolve_prompt(None, model)  # how /v1/answer asks the generator (logged once)
        log.info("serving %d documents", len(bank))

    def hits(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        return [[(int(r), float(s)) for r, s in zip(rr[:k], ss[:k]) if r >= 0] for rr, ss in zip(rows, scores)]

    def _query_keys(self, questions: list[str]):
        """Query states in the space the bank's keys were built in (the model's retrieval space)."""
        from clara.model.scoring import in_retrieval_space

        return in_retrieval_space(self.model, self.model.encode_query(questions))  # (B, m, H)

    def _retrieve_batch(self, items: list[tuple[str, Any, int]]) -> list:
        import torch

        k = max(item[2] for item in items)
        texts = [q for kind, qs, _ in items if kind == "text" for q in qs]
        found: dict[str, list] = {}
        if texts:
            with torch.no_grad():
                q = self._query_keys(texts)  # (T, m, H)
            found["text"] = self.hits(*self.bank.search(q, k), k)
        vecs = [v for kind, vs, _ in items if kind == "vec" for v in vs]
        if vecs:
            v = np.asarray(vecs, dtype=np.float32)  # (V, D)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
            found["vec"] = self.hits(*self.bank.search_vectors(v, k), k)
        out, cursor = [], {"text": 0, "vec": 0}
        for kind, qs, kk in items:
            rows = found[kind][cursor[kind]:cursor[kind] + len(qs)]
            cursor[kind] += len(qs)
            out.append([r[:kk] for r in rows])
        return out

    def _answer_batch(self, items: list[tuple[str, int, int]]) -> list:
        import torch

        k = max(item[1] for item in items)
        with torch.no_grad():
            q = self._query_keys([question for question, _, _ in items])  # (B, m, H)
        found = self.hits(*self.bank.search(q, k), k)
        picked = [hits[:kk] for hits, (_, kk, _) in zip(found, items)]
        answers: list[str | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (hits, (_, _, new_tokens)) in enumerate(zip(picked, items)):
            groups.setdefault((len(hits), new_tokens), []).append(i)
        for (kk, new_tokens), members in groups.items():
            mem = None
            if kk:
                rows = np.array([[r for r, _ in picked[i]] for i in members])  # (g, kk)
                mem = self.bank.memory(rows)  # (g, kk, m, H)
            for i, text in zip(members, self._ask([items[i][0] for i in members], mem, new_tokens)):
                answers[i] = text
        return [(a, hits) for a, hits in zip(answers, picked)]

    def _ask(self, questions: list[str], mem, max_new_tokens: int) -> list[str]:
        """Answers, the generator asked in the form its training run recorded (``generator_prompt``): an
        scp-trained generator gets stage 1's QA instruction and a ``Question: q / Answer:`` reply prefix."""
        from clara.model.prompts import extract_answer, generate_asked

        replies = generate_asked(self.model, questions, mem, self.prompt, max_new_tokens=max_new_tokens)
        return replies if self.prompt == "direct" else [extract_answer(t) for t in replies]

    def health(self) -> dict:
        info = self.bank.info
        return {
            "status": "ok",
            "bank": {"path": str(self.bank.directory), "count": info.count, "num_mem": info.num_mem,
                     "hidden_size": info.hidden_size, "dim": info.dim, "dtype": info.dtype.value,
                     "retrieval": info.retrieval.value, "index": info.index.kind.value,
                     "compressor_hash": info.compressor_hash},
            "model": {"type": type(self.model).__name__, "num_mem": self.model.num_mem,
                      "hidden_size": self.model.hidden_size},
            "queues": {b.name: {"waiting": b.queue.qsize(), "capacity": b.queue.maxsize, "batches": b.batches,
                                "requests": b.items} for b in (self.retriever, self.answerer)},
        }


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.code, exc.message)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        return error_response(429, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error_response(500, f"{type(exc).__name__}: {exc}"[:500])


def _document(bank: MemoryBank, row: int) -> dict:
    return {"id": bank.ids[row], "contents": f"{bank.titles[row]}\n{bank.texts[row]}"}


def create_app(
    settings: ServerSettings = ServerSettings(), *, model=None, bank: MemoryBank | None = None,
    loader: Callable[[], tuple[Any, MemoryBank]] | None = None,
) -> FastAPI:
    """The ASGI app. Give ``model`` and ``bank``, or a ``loader`` run in a thread at start-up
    (``/health`` answers 503 until it returns; a failure is reported there)."""
    service = Service(settings)
    schemas = make_schemas(settings)
    errors = {code: {"model": ErrorResponse} for code in (413, 422, 429, 503)}

    async def lifespan(app: FastAPI):
        service.retriever.start()
        service.answerer.start()
        if model is not None and bank is not None:
            service.install(model, bank)
        elif loader is not None:
            def load():
                try:
                    service.install(*loader())
                except Exception as e:  # noqa: BLE001 - shown by /health
                    log.exception("loading failed")
                    service.error = str(e)
            threading.Thread(target=load, name="clara-loader", daemon=True).start()
        yield
        await service.retriever.stop()
        await service.answerer.stop()
        service.executor.shutdown(wait=False)

    app = FastAPI(title="CLaRa retrieval server", version="1", lifespan=lifespan,
                  description="Latent-space retrieval and answers from compressed memory (DESIGN §9).")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)

    def require_ready() -> Service:
        if not service.ready:
            raise ApiError(503, f"not ready: {service.error}" if service.error else "not ready: model and bank are loading")
        return service

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health():
        if not service.ready:
            body = {"status": "failed" if service.error else "loading"}
            if service.error:
                body["error"] = service.error
            return JSONResponse(body, status_code=503)
        return service.health()

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=errors)
    async def retrieve(req: schemas.RetrieveRequest):
        svc = require_ready()
        if req.embeddings is not None:
            dim = svc.bank.info.dim
            bad = next((i for i, v in enumerate(req.embeddings) if len(v) != dim), None)
            if bad is not None:
                raise ApiError(422, f"embeddings[{bad}]: has {len(req.embeddings[bad])} values, the bank's retrieval "
                                    f"dimension is {dim}")
            item = ("vec", req.embeddings, req.k)
        else:
            item = ("text", req.queries, req.k)
        rows = await svc.retriever.submit(item)
        b = svc.bank
        return {"results": [[{"id": b.ids[r], "title": b.titles[r], "text": b.texts[r], "score": s} for r, s in hits]
                            for hits in rows]}

    @app.post("/v1/answer", response_model=AnswerResponse, responses=errors)
    async def answer(req: schemas.AnswerRequest):
        svc = require_ready()
        text, hits = await svc.answerer.submit((req.question, req.k, req.max_new_tokens))
        b = svc.bank
        return {"answer": text, "sources": [{"id": b.ids[r], "title": b.titles[r], "score": s} for r, s in hits]}

    @app.post("/retrieve", response_model=FlashResponse, responses=errors)
    async def flash_retrieve(req: schemas.FlashRequest):
        """Search-R1 / FlashRAG retriever protocol: documents, or {document, score} with return_scores."""
        svc = require_ready()
        k = req.topk or settings.default_topk
        rows = await svc.retriever.submit(("text", req.queries, k))
        b = svc.bank
        if req.return_scores:
            return {"result": [[{"document": _document(b, r), "score": s} for r, s in hits] for hits in rows]}
        return {"result": [[_document(b, r) for r, _ in hits] for hits in rows]}

    return app


def load_for_serving(bank_dir, model_spec, *, backbone=None, verify: str = "sha256", use_gpu=None, nprobe=None,
                     precision: str = "auto"):
    """Load model and bank and check they belong together (raises CheckpointError if not); the model's
    forwards run in ``precision`` (clara.devices.resolve_precision)."""
    from clara.serving.protocols import load_model

    bank = MemoryBank.open(bank_dir, verify=verify, use_gpu=use_gpu, nprobe=nprobe)
    model = load_model(model_spec, backbone, precision)
    check_compatible(model, bank)
    return model, bank


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, load test, benchmarks).

    ``port=0`` takes a free port; ``url`` is known once the context is entered.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host = host
        self.url = ""

    def __enter__(self) -> "ServerThread":
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server failed to start (see the log)")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
