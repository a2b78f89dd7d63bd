"""The latent-space retrieval server (DESIGN §9): FastAPI over a memory bank and a model.

Endpoints: ``GET /health`` (503 until model and bank are loaded), ``POST /v1/retrieve``,
``POST /v1/answer`` and ``POST /retrieve`` (Search-R1 / FlashRAG retriever protocol).
Requests are micro-batched (:mod:`clara.serving.batcher`) through the query reasoner, the bank
search and the generator, all in one model thread where retrieval goes first
(:mod:`clara.serving.model_thread`). Every error is JSON ``{"error": {"code", "type", "message"}}``:
401 no or wrong API key, 408 body too slow, 413 body too large, 422 bad schema / k out of range /
wrong vector dimension / over the work budget, 429 queue full, 503 not ready or shutting down,
500 model failure. The bank at the served path is picked up again when it changes
(:mod:`clara.serving.reload`); SIGTERM drains (:class:`DrainingServer`).
"""

# no `from __future__ import annotations`: FastAPI resolves the request models (locals) at runtime

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clara.errors import CheckpointError
from clara.serving.bank import MemoryBank
from clara.serving.batcher import MicroBatcher, QueueFull
from clara.serving.guards import (
    SHUTTING_DOWN,
    ApiError,
    ApiKey,
    BodyLimit,
    Drain,
    error_response,
    limit_accept_errors,
)
from clara.serving.model_thread import Draining, ModelThread
from clara.serving.protocols import compressor_hash
from clara.serving.reload import watch_bank
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


def check_compatible(model, bank: MemoryBank, ours: str | None = None) -> None:
    """Refuse a bank written by another compressor: its memory means nothing to this model.
    ``ours``: the model's compressor hash, if already known."""
    ours = ours or compressor_hash(model)
    if ours != bank.info.compressor_hash:
        raise CheckpointError(
            f"{bank.directory}: bank was built by compressor {bank.info.compressor_hash} but the loaded model's "
            f"compressor is {ours}; rebuild the bank with this model (`clara index build`) or serve the matching model"
        )
    if (model.num_mem, model.hidden_size) != (bank.info.num_mem, bank.info.hidden_size):
        raise CheckpointError(f"{bank.directory}: bank m={bank.info.num_mem}, H={bank.info.hidden_size} but model "
                              f"m={model.num_mem}, H={model.hidden_size}")


class Service:
    """Model + bank + batchers; the batch functions run in the model thread, retrieval's lane first."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.model = None
        self.bank: MemoryBank | None = None
        self.prompt = "direct"  # the generator's recorded prompt form, set by install()
        self.error: str | None = None
        self.bank_error: str | None = None  # why the last changed bank on disk was refused
        self.compressor: str | None = None
        self.count_tokens: Callable[[str], int] = lambda text: len(text.encode("utf-8"))
        self.drain = Drain()
        self.model_thread = ModelThread()
        self.drain.on_start(self.model_thread.stop_at)
        kw = dict(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size)
        self.retriever = MicroBatcher("retrieve", self._retrieve_batch, self.model_thread.lane(urgent=True), **kw)
        self.answerer = MicroBatcher("answer", self._answer_batch, self.model_thread.lane(urgent=False), **kw)

    @property
    def ready(self) -> bool:
        return self.model is not None and self.bank is not None

    def install(self, model, bank: MemoryBank) -> None:
        from clara.model.prompts import resolve_prompt

        ours = compressor_hash(model)
        check_compatible(model, bank, ours)
        if hasattr(model, "token_counter"):  # else UTF-8 bytes: never fewer than a byte-level BPE's tokens
            self.count_tokens = model.token_counter()
        self.compressor = ours
        self.model, self.bank = model, bank
        self.prompt = resolve_prompt(None, model)  # how /v1/answer asks the generator (logged once)
        log.info("serving %d documents", len(bank))

    def swap_bank(self, bank: MemoryBank) -> None:
        """Serve ``bank`` from the next batch on (raises CheckpointError for a bank of another compressor).
        One assignment: a batch reads ``self.bank`` once, so it runs on one bank from start to end."""
        check_compatible(self.model, bank, self.compressor)
        old, self.bank, self.bank_error = self.bank, bank, None
        log.info("bank %s changed on disk: now serving %d documents (was %d)", bank.directory, len(bank), len(old))

    def answer_work(self, question: str, k: int, max_new_tokens: int) -> tuple[int, str]:
        """(work, how it adds up) of one answer: the generator's sequence in token positions."""
        tokens, slots = self.count_tokens(question), k * self.model.num_mem
        work = tokens + slots + max_new_tokens
        return work, f"{tokens} question tokens + k={k} × {self.model.num_mem} memory slots + {max_new_tokens} new tokens"

    def hits(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        return [[(int(r), float(s)) for r, s in zip(rr[:k], ss[:k]) if r >= 0] for rr, ss in zip(rows, scores)]

    def _query_keys(self, questions: list[str]):
        """Query states in the space the bank's keys were built in (the model's retrieval space)."""
        from clara.model.scoring import in_retrieval_space

        return in_retrieval_space(self.model, self.model.encode_query(questions))  # (B, m, H)

    def _retrieve_batch(self, items: list[tuple[str, Any, int]]) -> list:
        """Per item (bank, hits per query): the rows name documents of the bank they were found in."""
        import torch

        bank = self.bank  # one bank for the whole batch, though a newer one may be swapped in meanwhile
        k = max(item[2] for item in items)
        texts = [q for kind, qs, _ in items if kind == "text" for q in qs]
        found: dict[str, list] = {}
        if texts:
            with torch.no_grad():
                q = self._query_keys(texts)  # (T, m, H)
            found["text"] = self.hits(*bank.search(q, k), k)
        vecs = [v for kind, vs, _ in items if kind == "vec" for v in vs]
        if vecs:
            v = np.asarray(vecs, dtype=np.float32)  # (V, D)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
            found["vec"] = self.hits(*bank.search_vectors(v, k), k)
        out, cursor = [], {"text": 0, "vec": 0}
        for kind, qs, kk in items:
            rows = found[kind][cursor[kind]:cursor[kind] + len(qs)]
            cursor[kind] += len(qs)
            out.append((bank, [r[:kk] for r in rows]))
        return out

    def _answer_batch(self, items: list[tuple[str, int, int]]) -> list:
        """Per item (answer, hits, bank)."""
        import torch

        bank = self.bank
        k = max(item[1] for item in items)
        with torch.no_grad():
            q = self._query_keys([question for question, _, _ in items])  # (B, m, H)
        found = self.hits(*bank.search(q, k), k)
        picked = [hits[:kk] for hits, (_, kk, _) in zip(found, items)]
        answers: list[str | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (hits, (_, _, new_tokens)) in enumerate(zip(picked, items)):
            groups.setdefault((len(hits), new_tokens), []).append(i)
        for (kk, new_tokens), members in groups.items():
            mem = None
            if kk:
                rows = np.array([[r for r, _ in picked[i]] for i in members])  # (g, kk)
                mem = bank.memory(rows)  # (g, kk, m, H)
            for i, text in zip(members, self._ask([items[i][0] for i in members], mem, new_tokens)):
                answers[i] = text
        return [(a, hits, bank) for a, hits in zip(answers, picked)]

    def _ask(self, questions: list[str], mem, max_new_tokens: int) -> list[str]:
        """Answers, the generator asked in the form its training run recorded (``generator_prompt``): an
        scp-trained generator gets stage 1's QA instruction and a ``Question: q / Answer:`` reply prefix."""
        from clara.model.prompts import extract_answer, generate_asked

        replies = generate_asked(self.model, questions, mem, self.prompt, max_new_tokens=max_new_tokens)
        return replies if self.prompt == "direct" else [extract_answer(t) for t in replies]

    def health(self) -> dict:
        info = self.bank.info
        bank = {"path": str(self.bank.directory), "count": info.count, "num_mem": info.num_mem,
                "hidden_size": info.hidden_size, "dim": info.dim, "dtype": info.dtype.value,
                "retrieval": info.retrieval.value, "index": info.index.kind.value,
                "compressor_hash": info.compressor_hash}
        if self.bank_error:
            bank["refused"] = self.bank_error
        return {
            "status": "draining" if self.drain.deadline is not None else "ok",
            "bank": bank,
            "model": {"type": type(self.model).__name__, "num_mem": self.model.num_mem,
                      "hidden_size": self.model.hidden_size},
            "queues": {b.name: {"waiting": b.queue.qsize(), "capacity": b.queue.maxsize, "batches": b.batches,
                                "requests": b.items} for b in (self.retriever, self.answerer)},
            "work_budget": self.settings.work_budget,
            "retrievals_between_answer_steps": self.model_thread.interleaved,
        }

    async def start(self) -> None:
        self.drain.bind(asyncio.get_running_loop())
        self.model_thread.start()
        self.retriever.start()
        self.answerer.start()

    async def stop(self) -> None:
        """After uvicorn's drain: stop the batchers, end a running answer at its next yield point."""
        await self.retriever.stop()
        await self.answerer.stop()
        self.model_thread.stop_at(time.monotonic())
        if not await asyncio.to_thread(self.model_thread.close, 5.0):
            log.warning("a model call was still running at exit; it is abandoned")


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

    @app.exception_handler(Draining)
    async def draining(request: Request, exc: Draining):
        return error_response(503, SHUTTING_DOWN)

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error_response(500, f"{type(exc).__name__}: {exc}"[:500])


def _document(bank: MemoryBank, row: int) -> dict:
    return {"id": bank.ids[row], "contents": f"{bank.titles[row]}\n{bank.texts[row]}"}


def create_app(
    settings: ServerSettings = ServerSettings(), *, model=None, bank: MemoryBank | None = None,
    loader: Callable[[], tuple[Any, MemoryBank]] | None = None, api_key: str | None = None,
    reopen_bank: Callable[[Any], MemoryBank] = MemoryBank.open,
) -> FastAPI:
    """The ASGI app. Give ``model`` and ``bank``, or a ``loader`` run in a thread at start-up
    (``/health`` answers 503 until it returns; a failure is reported there). ``api_key``: required as
    ``Authorization: Bearer`` on every path but /health. ``reopen_bank(directory)`` opens the bank again
    when its manifest changes (every ``settings.reload_s`` seconds; 0 never)."""
    service = Service(settings)
    schemas = make_schemas(settings)
    errors = {code: {"model": ErrorResponse} for code in (401, 408, 413, 422, 429, 503)}

    async def watch_when_ready():
        while not service.ready:
            await asyncio.sleep(0.1)
        await watch_bank(service, reopen_bank, settings.reload_s)

    async def lifespan(app: FastAPI):
        limit_accept_errors()
        await service.start()
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
        watcher = asyncio.create_task(watch_when_ready(), name="bank-watcher") if settings.reload_s else None
        yield
        if watcher is not None:
            watcher.cancel()
        await service.stop()

    app = FastAPI(title="CLaRa retrieval server", version="1", lifespan=lifespan,
                  description="Latent-space retrieval and answers from compressed memory (DESIGN §9).")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       drain=service.drain)
    if api_key is not None:
        app.add_middleware(ApiKey, key=api_key)  # outermost: a client without the key is not even read
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
        b, rows = await svc.drain.within(svc.retriever.submit(item))
        return {"results": [[{"id": b.ids[r], "title": b.titles[r], "text": b.texts[r], "score": s} for r, s in hits]
                            for hits in rows]}

    @app.post("/v1/answer", response_model=AnswerResponse, responses=errors)
    async def answer(req: schemas.AnswerRequest):
        svc = require_ready()
        work, terms = svc.answer_work(req.question, req.k, req.max_new_tokens)
        if work > settings.work_budget:
            raise ApiError(422, f"this answer's work is {work} token positions ({terms}), over the server's work "
                                f"budget of {settings.work_budget}; shorten the question or lower k or max_new_tokens")
        text, hits, b = await svc.drain.within(svc.answerer.submit((req.question, req.k, req.max_new_tokens)))
        return {"answer": text, "sources": [{"id": b.ids[r], "title": b.titles[r], "score": s} for r, s in hits]}

    @app.post("/retrieve", response_model=FlashResponse, responses=errors)
    async def flash_retrieve(req: schemas.FlashRequest):
        """Search-R1 / FlashRAG retriever protocol: documents, or {document, score} with return_scores."""
        svc = require_ready()
        k = req.topk or settings.default_topk
        b, rows = await svc.drain.within(svc.retriever.submit(("text", req.queries, k)))
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


class DrainingServer(uvicorn.Server):
    """uvicorn whose exit (SIGTERM, Ctrl-C, or ``should_exit``) first starts the app's drain clock: requests
    in flight get ``settings.drain_s`` to finish, then 503, and a running answer stops at its next step.
    uvicorn's own graceful-shutdown timeout, a little later, cancels whatever is left."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.service: Service = app.state.service
        drain_s = self.service.settings.drain_s
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                        timeout_graceful_shutdown=drain_s + 1.0))

    def handle_exit(self, sig, frame) -> None:
        self.service.drain.start(self.service.settings.drain_s)
        super().handle_exit(sig, frame)


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, load test, benchmarks).

    ``port=0`` takes a free port; ``url`` is known once the context is entered. Leaving drains as SIGTERM does.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.server = DrainingServer(app, host=host, port=port, log_level=log_level)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host = host
        self.url = ""

    def __enter__(self) -> "ServerThread":
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
        self.server.service.drain.start(self.server.service.settings.drain_s)
        self.server.should_exit = True
        self.thread.join(timeout=30)
