"""The memory bank: compressed documents on disk, searchable in latent space (DESIGN §9).

A bank is a directory::

    memory.bin        raw little-endian uint16, shape (count, m, H): the bit patterns of the
                      memory states in fp16 or bf16 (numpy has no bf16, so both are stored as
                      uint16 and viewed as the float type in torch). Opened with np.memmap.
    retrieval.faiss   faiss index over the L2-normalised retrieval vectors (inner product =
    | retrieval.npy   cosine): flat (exact), ivf or ivfpq; or, with index kind "kernel", the
                      vectors themselves (float32, or fp16 / bf16 as uint16 bit patterns like
                      memory.bin: index.vectors in the manifest), searched by clara.kernels.
    meta.jsonl        one {"id", "title", "text"} per row, in memory order.
    manifest.json     format, compressor hash, CR, m, H, count, dtype, retrieval mode, index
                      parameters and the sha256 and size of every file.

Retrieval vectors are computed from the *stored* (rounded) memory: the flattened m·H states
("flat", the space joint training scores in) or their mean over the m slots ("pooled").
Banks are only ever written whole into a temporary directory and renamed into place
(:mod:`clara.serving.bank_build`), so a reader sees the old bank or the new one, never a mix.
Opening a bank checks every file's size always and its sha256 unless ``verify="size"``.

Exact search on CPU (a flat index, or the kernel's vectors) is clara.kernels' streaming
search over the stored vectors, with their inverse norms computed once when the bank opens;
the vectors of a flat faiss index are read in place. It measured faster than faiss's own
flat search at every batch size (``python -m clara.kernels.bench --cpu-roofline``).
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clara.config import Scoring
from clara.errors import CheckpointError, ConfigError
from clara.fileio import MANIFEST, recover_directory, verify_manifest
from clara.model.scoring import retrieval_vectors

log = logging.getLogger(__name__)

FORMAT = "clara-bank/1"
MEMORY_FILE = "memory.bin"
FAISS_FILE = "retrieval.faiss"
VECTORS_FILE = "retrieval.npy"
META_FILE = "meta.jsonl"
EPS = 1e-8


class MemDtype(str, enum.Enum):
    FP16 = "fp16"
    BF16 = "bf16"


def retrieval_spelling(scoring: Scoring) -> str:
    """How a bank manifest names its retrieval vector: "flat" (flattened m·H) or "pooled" (mean over m)."""
    return "flat" if scoring is Scoring.FLATTENED else scoring.value


class VectorDtype(str, enum.Enum):
    """Storage type of a kernel index's retrieval vectors (``--vectors``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


# numpy storage of each vector dtype (fp16 and bf16 as uint16 bit patterns, as in memory.bin)
_VECTOR_NUMPY = {VectorDtype.FP32: np.float32, VectorDtype.FP16: np.uint16, VectorDtype.BF16: np.uint16}


class IndexKind(str, enum.Enum):
    FLAT = "flat"  # faiss IndexFlatIP: exact
    IVF = "ivf"  # faiss IndexIVFFlat: inverted lists, approximate, nprobe lists searched
    IVFPQ = "ivfpq"  # faiss IndexIVFPQ: inverted lists + product quantisation, smallest
    KERNEL = "kernel"  # retrieval.npy searched by clara.kernels.cosine_topk (Triton on CUDA)


def _enum(cls, value, what: str):
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"{what}={value!r} is unknown; use one of: {', '.join(v.value for v in cls)}") from None


@dataclass(frozen=True)
class IndexParams:
    kind: IndexKind = IndexKind.FLAT
    nlist: int = 0  # ivf lists; 0 = about sqrt(count)
    nprobe: int = 8  # lists visited per query (ivf, ivfpq)
    pq_m: int = 0  # ivfpq sub-quantisers; 0 = the largest of 64, 32, 16, 8, 4, 2, 1 dividing the dim
    vectors: VectorDtype = VectorDtype.FP32  # kernel: storage type of retrieval.npy

    def __post_init__(self):
        object.__setattr__(self, "kind", _enum(IndexKind, self.kind, "index kind"))
        object.__setattr__(self, "vectors", _enum(VectorDtype, self.vectors, "--vectors"))
        if self.nlist < 0 or self.nprobe < 1 or self.pq_m < 0:
            raise ConfigError(f"index: nlist={self.nlist} >= 0, nprobe={self.nprobe} >= 1, pq_m={self.pq_m} >= 0 required")
        if self.vectors is not VectorDtype.FP32 and self.kind is not IndexKind.KERNEL:
            raise ConfigError(f"--vectors {self.vectors.value} needs --faiss kernel (faiss indexes hold float32)")

    def to_manifest(self) -> dict:
        d = {**asdict(self), "kind": self.kind.value, "vectors": self.vectors.value}
        if self.vectors is VectorDtype.FP32:
            del d["vectors"]  # as banks before --vectors wrote it: they stay readable by older versions
        return d


@dataclass(frozen=True)
class BankInfo:
    count: int
    num_mem: int
    hidden_size: int
    dtype: MemDtype
    retrieval: Scoring
    index: IndexParams
    compressor_hash: str
    chunk_len: int | None = None
    compression_rate: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Length of one retrieval vector."""
        return self.num_mem * self.hidden_size if self.retrieval is Scoring.FLATTENED else self.hidden_size

    @property
    def memory_bytes(self) -> int:
        return self.count * self.num_mem * self.hidden_size * 2

    def to_manifest(self) -> dict:
        d = asdict(self)
        d.update(format=FORMAT, dtype=self.dtype.value, retrieval=retrieval_spelling(self.retrieval),
                 index=self.index.to_manifest())
        return d

    @classmethod
    def from_manifest(cls, where: Path, m: dict) -> "BankInfo":
        if m.get("format") != FORMAT:
            raise CheckpointError(f"{where}: format {m.get('format')!r} is not {FORMAT!r}; not a memory bank (or from another version)")
        try:
            return cls(
                count=int(m["count"]), num_mem=int(m["num_mem"]), hidden_size=int(m["hidden_size"]),
                dtype=MemDtype(m["dtype"]), retrieval=Scoring(m["retrieval"]),
                index=IndexParams(**m["index"]), compressor_hash=str(m["compressor_hash"]),
                chunk_len=m.get("chunk_len"), compression_rate=m.get("compression_rate"), extra=m.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{where}: bad bank manifest field ({e})") from None


# ---------------------------------------------------------------------------- conversions


def to_bits(mem, dtype: MemDtype) -> np.ndarray:
    """Memory states (B, m, H) float tensor -> uint16 bit patterns of fp16/bf16 (B, m, H)."""
    import torch

    target = torch.float16 if dtype is MemDtype.FP16 else torch.bfloat16
    low = mem.detach().to("cpu", target)  # (B, m, H)
    if not torch.isfinite(low).all():
        bad = "overflow fp16 (|x| > 65504)" if dtype is MemDtype.FP16 and torch.isfinite(mem).all() else "are not finite"
        raise CheckpointError(f"memory states {bad}; use --dtype bf16, or check the compressor")
    return low.contiguous().view(torch.int16).numpy().view(np.uint16)


def from_bits(bits: np.ndarray, dtype: MemDtype):
    """uint16 bit patterns (..., m, H) -> float32 tensor of the same shape."""
    import torch

    target = torch.float16 if dtype is MemDtype.FP16 else torch.bfloat16
    raw = torch.from_numpy(np.ascontiguousarray(bits).view(np.int16))
    return raw.view(target).to(torch.float32)


# ---------------------------------------------------------------------------- faiss


def default_pq_m(dim: int) -> int:
    return next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)


def new_faiss_index(params: IndexParams, dim: int, count: int):
    """An empty (untrained for ivf/ivfpq) faiss index; ``count`` only sizes nlist."""
    import faiss

    if params.kind is IndexKind.FLAT:
        return faiss.IndexFlatIP(dim), params
    nlist = params.nlist or max(1, int(round(count ** 0.5)))
    quantizer = faiss.IndexFlatIP(dim)
    pq_m = 0
    if params.kind is IndexKind.IVF:
        need = nlist
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        pq_m = params.pq_m or default_pq_m(dim)
        if dim % pq_m:
            raise ConfigError(f"--pq-m {pq_m} does not divide the retrieval dimension {dim}")
        need = max(nlist, 256)  # 8-bit codebooks need 256 training points
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    if count < need:
        raise ConfigError(
            f"--faiss {params.kind.value} needs at least {need} documents to train (corpus has {count}); "
            "use --faiss flat or a smaller --nlist"
        )
    index.nprobe = params.nprobe
    return index, IndexParams(params.kind, nlist, params.nprobe, pq_m)


def _read_faiss(path: Path):
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise CheckpointError(f"{path}: unreadable faiss index ({first[:200]}); rebuild the bank") from None


def _to_gpu(index, use_gpu: bool | None):
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is False or gpus == 0:
        if use_gpu:
            raise ConfigError("use_gpu=True but this faiss has no GPU support (install faiss-gpu)")
        return index
    res = faiss.StandardGpuResources()
    log.info("bank index moved to GPU 0 (faiss-gpu)")
    return faiss.index_cpu_to_gpu(res, 0, index)


# ---------------------------------------------------------------------------- reading


def read_manifest(directory: Path, verify: str = "sha256") -> tuple[dict, BankInfo]:
    """Check the files against the manifest (sizes always; sha256 unless verify="size")."""
    if verify not in ("sha256", "size"):
        raise ConfigError(f"verify={verify!r}; use 'sha256' or 'size'")
    if not directory.is_dir() and not recover_directory(directory):
        raise CheckpointError(f"{directory}: no such bank directory; build one with `clara index build`")
    if verify == "sha256":
        manifest = verify_manifest(directory)
    else:
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{directory / MANIFEST}: missing or unreadable ({e})") from None
        for rel, entry in manifest.get("files", {}).items():
            p = directory / rel
            if not p.is_file() or p.stat().st_size != entry["bytes"]:
                size = p.stat().st_size if p.is_file() else "missing"
                raise CheckpointError(f"{p}: size {size} != {entry['bytes']} in {MANIFEST} (truncated?)")
    info = BankInfo.from_manifest(directory / MANIFEST, manifest)
    expected = {MEMORY_FILE, META_FILE, VECTORS_FILE if info.index.kind is IndexKind.KERNEL else FAISS_FILE}
    missing = expected - set(manifest.get("files", {}))
    if missing:
        raise CheckpointError(f"{directory / MANIFEST}: does not list {sorted(missing)}; the bank is incomplete")
    mem_size = (directory / MEMORY_FILE).stat().st_size
    if mem_size != info.memory_bytes:
        raise CheckpointError(
            f"{directory / MEMORY_FILE}: {mem_size} bytes but count={info.count} × m={info.num_mem} × "
            f"H={info.hidden_size} × 2 = {info.memory_bytes}"
        )
    return manifest, info


def manifest_stamp(directory: Path) -> tuple | None:
    """Which manifest file is at ``directory`` now (device, inode, size, mtime), None if none: every bank
    swapped into place brings a new manifest file, so a changed stamp is a changed bank."""
    try:
        st = (Path(directory) / MANIFEST).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_meta(path: Path, count: int) -> tuple[list[str], list[str], list[str]]:
    ids, titles, texts = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                titles.append(row.get("title") or "")
                texts.append(row["text"])
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{path}:{lineno}: bad bank metadata line ({e})") from None
    if len(ids) != count:
        raise CheckpointError(f"{path}: {len(ids)} rows but the manifest says count={count}")
    return ids, titles, texts


class MemoryBank:
    """An opened bank: memory-mapped states, a search index and document metadata."""

    def __init__(self, directory: Path, info: BankInfo, index, vectors, ids, titles, texts):
        self.directory = directory
        self.info = info
        self._index = index  # faiss index (approximate, or on a GPU) or None; a flat one owns _vectors
        self._vectors = vectors  # torch (N, D) searched by clara.kernels, else None
        self._inv_norms = None  # (N,) float32 1/|row| of _vectors, computed once here
        if vectors is not None:
            from clara.kernels.dispatch import inverse_norms, warm_up_topk

            self._inv_norms = inverse_norms(vectors)
            warm_up_topk(vectors, self._inv_norms)  # not in the first request's time
        self.ids, self.titles, self.texts = ids, titles, texts
        self._memory = np.memmap(directory / MEMORY_FILE, dtype=np.uint16, mode="r",
                                 shape=(info.count, info.num_mem, info.hidden_size))
        self.stamp: tuple | None = None  # manifest_stamp() of the manifest this bank was opened from

    @classmethod
    def open(cls, directory: str | Path, *, verify: str = "sha256", use_gpu: bool | None = None,
             nprobe: int | None = None) -> "MemoryBank":
        directory = Path(directory)
        stamp = manifest_stamp(directory)  # before reading: a bank swapped in meanwhile shows as a change later
        _, info = read_manifest(directory, verify)
        ids, titles, texts = read_meta(directory / META_FILE, info.count)
        index = vectors = None
        if info.index.kind is IndexKind.KERNEL:
            vectors = _load_vectors(directory / VECTORS_FILE, info)
        else:
            index = _read_faiss(directory / FAISS_FILE)
            if index.ntotal != info.count or index.d != info.dim:
                raise CheckpointError(
                    f"{directory / FAISS_FILE}: {index.ntotal} vectors of dim {index.d}, manifest says "
                    f"{info.count} of dim {info.dim}"
                )
            if info.index.kind is not IndexKind.FLAT:
                index.nprobe = nprobe or info.index.nprobe
            index = _to_gpu(index, use_gpu)
            vectors = _flat_vectors(index)
        log.info("bank %s: %d documents, m=%d, H=%d, %s, %s retrieval, %s index", directory, info.count,
                 info.num_mem, info.hidden_size, info.dtype.value, info.retrieval.value, info.index.kind.value)
        bank = cls(directory, info, index, vectors, ids, titles, texts)
        bank.stamp = stamp
        return bank

    def __len__(self) -> int:
        return self.info.count

    def compile_search(self) -> None:
        """Compile the CPU search's fused one-query product for this bank's vectors (seconds, once a process;
        ``clara serve`` does unless ``--no-compile-search``). Nothing to do for a GPU or an approximate index."""
        if self._vectors is not None:
            from clara.kernels.dispatch import warm_up_topk

            warm_up_topk(self._vectors, self._inv_norms, fused=True)

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised query vectors (B, D) -> (scores (B, k') float32, indices (B, k') int64), k' = min(k, count).

        An approximate index may find fewer than k' documents for a row; missing ones are -1.
        Exact search ranks tied documents by row.
        """
        k = min(int(k), self.info.count)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (B, D)
        if self._vectors is not None:
            import torch

            from clara.kernels.dispatch import cosine_topk

            q = torch.from_numpy(vectors).to(self._vectors.device)
            values, indices = cosine_topk(q, self._vectors, k, inv_norms=self._inv_norms)  # (B, k), (B, k)
            return values.float().cpu().numpy(), indices.cpu().numpy().astype(np.int64)
        scores, indices = self._index.search(vectors, k)  # (B, k), (B, k)
        return scores, indices

    def search(self, query_mem, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Query states (B, m, H) from the query encoder -> top-k (scores, indices)."""
        if tuple(query_mem.shape[1:]) != (self.info.num_mem, self.info.hidden_size):
            raise CheckpointError(
                f"query states {tuple(query_mem.shape)} do not fit bank {self.directory} "
                f"(m={self.info.num_mem}, H={self.info.hidden_size})"
            )
        return self.search_vectors(retrieval_vectors(query_mem, self.info.retrieval), k)

    def memory(self, indices: np.ndarray):
        """Row indices (B, k) -> memory states float32 tensor (B, k, m, H), read from the memmap."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.info.count):
            raise IndexError(f"bank rows {idx.min()}..{idx.max()} outside 0..{self.info.count - 1}")
        return from_bits(self._memory[idx], self.info.dtype)  # (B, k, m, H)

    def document(self, row: int) -> dict:
        return {"id": self.ids[row], "title": self.titles[row], "text": self.texts[row]}


def _load_vectors(path: Path, info: BankInfo):
    import torch

    try:
        arr = np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable vectors ({e}); rebuild the bank") from None
    want = np.dtype(_VECTOR_NUMPY[info.index.vectors])
    if arr.shape != (info.count, info.dim) or arr.dtype != want:
        raise CheckpointError(f"{path}: shape {arr.shape} {arr.dtype}, manifest says ({info.count}, {info.dim}) "
                              f"{want} (vectors {info.index.vectors.value}); rebuild the bank")
    t = torch.from_numpy(arr)
    if info.index.vectors is not VectorDtype.FP32:  # bit patterns, as memory.bin stores them
        t = t.view(torch.int16).view(torch.float16 if info.index.vectors is VectorDtype.FP16 else torch.bfloat16)
    return t.cuda() if torch.cuda.is_available() else t


def _flat_vectors(index):
    """The float32 rows of a flat faiss index on the CPU, in place (no copy), as a torch view;
    None for any other index. The index owns the memory and must outlive the view."""
    import faiss
    import torch

    if not isinstance(index, faiss.IndexFlat):
        return None
    rows = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)  # numpy view of the index's storage
    return torch.from_numpy(rows.reshape(index.ntotal, index.d))


def vectors_to_numpy(vectors: np.ndarray, dtype: VectorDtype) -> np.ndarray:
    """float32 retrieval vectors (N, D) -> their storage in retrieval.npy."""
    if dtype is VectorDtype.FP32:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    import torch

    return to_bits(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), MemDtype(dtype.value))


def vectors_from_numpy(arr: np.ndarray, dtype: VectorDtype) -> np.ndarray:
    """retrieval.npy contents -> float32 (N, D), exactly (every stored value is a float32)."""
    return arr if dtype is VectorDtype.FP32 else from_bits(arr, MemDtype(dtype.value)).numpy()


def verify_bank(directory: str | Path) -> BankInfo:
    """Full check: every sha256, the memory size, the metadata rows and the index size."""
    bank = MemoryBank.open(directory, verify="sha256", use_gpu=False)
    if len(set(bank.ids)) != len(bank.ids):
        raise CheckpointError(f"{Path(directory) / META_FILE}: duplicate document ids")
    return bank.info
