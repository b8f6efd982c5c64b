"""Megatron ``IndexedDataset`` files (``.bin`` + ``.idx``) written and read with numpy only.

Format (megatron/core/datasets/indexed_dataset.py, little-endian):
    .idx: magic b"MMIDIDX\\x00\\x00" | u64 version=1 | u8 dtype code | u64 N sequences | u64 D (= documents+1)
          | int32[N] sequence lengths | int64[N] byte offsets into .bin | int64[D] document indices [0..N]
    .bin: the token ids, concatenated, in the dtype.
Every document here is one sequence (document level, as ``preprocess_data.py`` without sentence
splitting writes it), so the document indices are simply ``0..N``.

Safety: the writer fills ``*.tmp`` files, fsyncs them and renames ``.bin`` first and ``.idx`` last,
so a ``.bin/.idx`` pair that is present is complete; a crash leaves only ``*.tmp`` files behind.
Memory stays bounded: sequence lengths go to a temporary file while writing, and the index is
streamed out in chunks at the end, whatever the number of documents.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
HEADER_SIZE = 9 + 8 + 1 + 8 + 8  # 34 bytes
_CHUNK = 1 << 20  # sequences per chunk when streaming the index

# Megatron's DType codes.
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF: dict[np.dtype, int] = {np.dtype(t): c for c, t in DTYPE_CODES.items()}


class IndexFormatError(ValueError):
    """An .idx/.bin pair is not a valid Megatron IndexedDataset."""


def optimal_dtype(vocab_size: int) -> type[np.number]:
    """Megatron's ``DType.optimal_dtype``: uint16 only for a vocabulary smaller than 65500."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class IndexedWriter:
    """Append documents (one sequence each) and finalize into ``{prefix}.bin`` / ``{prefix}.idx``."""

    def __init__(self, prefix: str | os.PathLike[str], dtype: type[np.number]) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no Megatron code; allowed: {sorted(map(str, CODE_OF))}")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = Path(f"{self.prefix}.bin.tmp")
        self._len_tmp = Path(f"{self.prefix}.lengths.tmp")
        self._bin = open(self._bin_tmp, "wb")
        self._len = open(self._len_tmp, "wb")
        self.documents = 0
        self.tokens = 0
        self._closed = False

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``len(lengths)`` documents whose tokens are concatenated in ``tokens``."""
        lengths = np.asarray(lengths, dtype=np.int32)
        total = int(lengths.sum(dtype=np.int64))
        if total != len(tokens):
            raise ValueError(f"lengths sum to {total}, but {len(tokens)} tokens were given")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._len.write(lengths.tobytes())
        self.documents += len(lengths)
        self.tokens += total

    def append_dataset(self, prefix: str | os.PathLike[str]) -> None:
        """Append all documents of an existing dataset (the per-shard merge; same bytes as one pass)."""
        idx = read_index(prefix)
        if idx.dtype != self.dtype:
            raise IndexFormatError(f"{prefix}.idx: dtype {idx.dtype}, expected {self.dtype}")
        with open(f"{prefix}.bin", "rb") as f:
            while True:
                block = f.read(64 << 20)
                if not block:
                    break
                self._bin.write(block)
        for start in range(0, idx.sequences, _CHUNK):
            self._len.write(np.asarray(idx.lengths[start:start + _CHUNK], dtype=np.int32).tobytes())
        self.documents += idx.sequences
        self.tokens += idx.tokens

    def abort(self) -> None:
        """Close and delete the temporary files (nothing that looks complete is left)."""
        if not self._closed:
            self._bin.close()
            self._len.close()
            self._closed = True
        for p in (self._bin_tmp, self._len_tmp, Path(f"{self.prefix}.idx.tmp")):
            p.unlink(missing_ok=True)

    def finalize(self) -> tuple[Path, Path]:
        """fsync and rename: ``.bin`` first, ``.idx`` last (its presence marks the pair complete)."""
        _fsync_file(self._bin)
        self._bin.close()
        self._len.close()
        self._closed = True
        bin_path, idx_path = Path(f"{self.prefix}.bin"), Path(f"{self.prefix}.idx")
        idx_tmp = Path(f"{self.prefix}.idx.tmp")
        # An older pair at this prefix must not survive half-replaced: drop its index first.
        idx_path.unlink(missing_ok=True)
        n = self.documents
        lengths = np.memmap(self._len_tmp, dtype=np.int32, mode="r") if n else np.zeros(0, np.int32)
        with open(idx_tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", CODE_OF[self.dtype]))
            f.write(struct.pack("<Q", n))
            f.write(struct.pack("<Q", n + 1))
            f.writelines(np.asarray(lengths[start:start + _CHUNK], dtype=np.int32).tobytes() for start in range(0, n, _CHUNK))
            offset = 0
            for start in range(0, n, _CHUNK):
                chunk = np.asarray(lengths[start:start + _CHUNK], dtype=np.int64) * self.dtype.itemsize
                pointers = np.empty_like(chunk)
                pointers[0] = offset
                np.cumsum(chunk[:-1], out=pointers[1:])
                pointers[1:] += offset
                offset += int(chunk.sum())
                f.write(pointers.tobytes())
            for start in range(0, n + 1, _CHUNK):
                f.write(np.arange(start, min(start + _CHUNK, n + 1), dtype=np.int64).tobytes())
            _fsync_file(f)
        del lengths
        os.replace(self._bin_tmp, bin_path)
        os.replace(idx_tmp, idx_path)
        self._len_tmp.unlink(missing_ok=True)
        _fsync_dir(bin_path.parent)
        return bin_path, idx_path


@dataclass(frozen=True)
class IndexInfo:
    """A read-only view of an ``.idx`` file (arrays are memory maps: cheap for any size)."""

    prefix: str
    dtype: np.dtype
    sequences: int
    documents: int
    lengths: np.ndarray
    pointers: np.ndarray
    document_indices: np.ndarray

    @property
    def tokens(self) -> int:
        """Total tokens, from the last pointer: O(1), no scan of the lengths."""
        if self.sequences == 0:
            return 0
        return int(self.pointers[-1]) // self.dtype.itemsize + int(self.lengths[-1])


def read_index(prefix: str | os.PathLike[str], *, check_bin: bool = True) -> IndexInfo:
    """Open ``{prefix}.idx`` (and check ``{prefix}.bin``'s size); errors name the file and what is wrong."""
    idx_path = f"{prefix}.idx"
    try:
        size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise IndexFormatError(f"{idx_path}: no such file (expected a Megatron .idx next to {prefix}.bin)") from None
    if len(header) < HEADER_SIZE or header[:9] != MAGIC:
        raise IndexFormatError(f"{idx_path}: not a Megatron index (magic {header[:9]!r}, expected {MAGIC!r})")
    (version,) = struct.unpack("<Q", header[9:17])
    code = header[17]
    n, d = struct.unpack("<QQ", header[18:34])
    if version != 1:
        raise IndexFormatError(f"{idx_path}: version {version}, only version 1 is known")
    if code not in DTYPE_CODES:
        raise IndexFormatError(f"{idx_path}: dtype code {code}, allowed {sorted(DTYPE_CODES)}")
    expected = HEADER_SIZE + 12 * n + 8 * d
    if size not in (expected, expected + n):  # + n: int8 modes of multimodal datasets
        raise IndexFormatError(f"{idx_path}: {size} bytes, expected {expected} for N={n}, D={d} (truncated?)")
    dtype = np.dtype(DTYPE_CODES[code])
    mm = np.memmap(idx_path, dtype=np.uint8, mode="r")
    lengths = mm[HEADER_SIZE:HEADER_SIZE + 4 * n].view(np.int32)
    pointers = mm[HEADER_SIZE + 4 * n:HEADER_SIZE + 12 * n].view(np.int64)
    doc_idx = mm[HEADER_SIZE + 12 * n:HEADER_SIZE + 12 * n + 8 * d].view(np.int64)
    info = IndexInfo(str(prefix), dtype, n, d - 1, lengths, pointers, doc_idx)
    if check_bin:
        bin_path = f"{prefix}.bin"
        try:
            bin_size = os.path.getsize(bin_path)
        except FileNotFoundError:
            raise IndexFormatError(f"{bin_path}: missing, but {idx_path} exists") from None
        if bin_size != info.tokens * dtype.itemsize:
            raise IndexFormatError(
                f"{bin_path}: {bin_size} bytes, but {idx_path} describes {info.tokens} tokens of {dtype} "
                f"({info.tokens * dtype.itemsize} bytes)"
            )
    return info


def read_document(info: IndexInfo, i: int) -> np.ndarray:
    """Tokens of sequence ``i`` (reads only that slice of ``.bin``)."""
    length = int(info.lengths[i])
    return np.fromfile(f"{info.prefix}.bin", dtype=info.dtype, count=length, offset=int(info.pointers[i]))


def iter_lengths(info: IndexInfo, chunk: int = _CHUNK) -> Iterable[np.ndarray]:
    """Sequence lengths in chunks (bounded memory)."""
    for start in range(0, info.sequences, chunk):
        yield np.asarray(info.lengths[start:start + chunk])


def merge_datasets(prefixes: Iterable[str | os.PathLike[str]], output_prefix: str | os.PathLike[str]) -> IndexInfo:
    """Concatenate datasets of one dtype into ``output_prefix`` (.bin then .idx, atomically).

    The bytes equal tokenizing all their inputs in one pass, and megatron-core's
    ``IndexedDatasetBuilder.add_index`` merge (tests check both): use it to join the outputs of
    tokenize jobs that each handled a group of shards.
    """
    prefixes = [str(p) for p in prefixes]
    if not prefixes:
        raise ValueError("merge_datasets: no dataset to merge")
    first = read_index(prefixes[0])
    writer = IndexedWriter(output_prefix, first.dtype.type)
    try:
        for p in prefixes:
            writer.append_dataset(p)
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return read_index(output_prefix)
