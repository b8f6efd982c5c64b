"""Scalars from TensorBoard event files, read without TensorBoard or TensorFlow (the report needs only matplotlib).

An event file is a sequence of TFRecords (u64 length, u32 masked CRC of it, the data, u32 masked CRC of the data),
each an ``Event`` protobuf: ``wall_time`` (field 1, double), ``step`` (2, int64), ``summary`` (5) holding repeated
``Value``s with a ``tag`` (1) and a ``simple_value`` (2, float) -- what Lightning's TensorBoardLogger writes through
``SummaryWriter.add_scalar``. Tensor-valued scalars (``tensor``, field 8: a 0-d float ``TensorProto``) are read too.
CRCs are not checked: a file cut short by a kill ends the read at the last whole record.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

Scalars = dict[str, list[tuple[int, float, float]]]  # tag -> [(step, wall_time, value)]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message: ints for varint/fixed, bytes for length-delimited."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield num, wire, v
        elif wire == 1:
            yield num, wire, int.from_bytes(buf[i:i + 8], "little")
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i)
            yield num, wire, buf[i:i + n]
            i += n
        elif wire == 5:
            yield num, wire, int.from_bytes(buf[i:i + 4], "little")
            i += 4
        else:  # groups (3, 4) are not used by event files
            raise ValueError(f"protobuf wire type {wire}")


def _tensor_value(buf: bytes) -> float | None:
    """A 0-d float TensorProto: float_val (5, packed or not), double_val (6) or tensor_content (4)."""
    dtype = 0
    content = b""
    for num, wire, v in _fields(buf):
        if num == 1 and isinstance(v, int):
            dtype = v
        elif num == 5 and wire == 5 and isinstance(v, int):
            return float(struct.unpack("<f", v.to_bytes(4, "little"))[0])
        elif num == 5 and isinstance(v, bytes) and len(v) >= 4:
            return float(struct.unpack("<f", v[:4])[0])
        elif num == 6 and wire == 1 and isinstance(v, int):
            return float(struct.unpack("<d", v.to_bytes(8, "little"))[0])
        elif num == 4 and isinstance(v, bytes):
            content = v
    if content and dtype in (1, 2):  # DT_FLOAT, DT_DOUBLE
        return float(struct.unpack("<f" if dtype == 1 else "<d", content[:4 if dtype == 1 else 8])[0])
    return None


def _records(data: bytes) -> Iterator[bytes]:
    i = 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        if i + 12 + n + 4 > len(data):
            return  # cut short
        yield data[i + 12:i + 12 + n]
        i += 12 + n + 4


def read_scalars(path: str | Path) -> Scalars:
    """Every scalar of one event file, by tag, in file order."""
    out: Scalars = {}
    for rec in _records(Path(path).read_bytes()):
        wall, step, summary = 0.0, 0, b""
        try:
            for num, _wire, v in _fields(rec):
                if num == 1 and isinstance(v, int):
                    wall = struct.unpack("<d", v.to_bytes(8, "little"))[0]
                elif num == 2 and isinstance(v, int):
                    step = v
                elif num == 5 and isinstance(v, bytes):
                    summary = v
            for num, _wire, value in _fields(summary):
                if num != 1 or not isinstance(value, bytes):
                    continue
                tag, val = "", None
                for vn, vw, vv in _fields(value):
                    if vn == 1 and isinstance(vv, bytes):
                        tag = vv.decode("utf-8", "replace")
                    elif vn == 2 and vw == 5 and isinstance(vv, int):
                        val = float(struct.unpack("<f", vv.to_bytes(4, "little"))[0])
                    elif vn == 8 and isinstance(vv, bytes):
                        val = _tensor_value(vv)
                if tag and val is not None:
                    out.setdefault(tag, []).append((step, wall, val))
        except (ValueError, IndexError, struct.error):
            continue  # not an Event we understand: skip the record, keep the rest
    return out


def run_scalars(tb_dir: str | Path) -> tuple[Scalars, list[Path]]:
    """All scalars of every event file under ``tb_dir`` (NeMo moves old ones into run_N/ on a resume), merged by
    tag in wall-time order; and the files read."""
    files = sorted(Path(tb_dir).rglob("events.out.tfevents.*")) if Path(tb_dir).is_dir() else []
    merged: Scalars = {}
    for f in files:
        try:
            for tag, pts in read_scalars(f).items():
                merged.setdefault(tag, []).extend(pts)
        except OSError:
            continue
    for pts in merged.values():
        pts.sort(key=lambda p: (p[1], p[0]))
    return merged, files


# NeMo's (Lightning's) scalar names for what the step log holds
TRAIN_LOSS_TAG, LR_TAG, VAL_LOSS_TAG, SAMPLES_TAG = "reduced_train_loss", "lr", "val_loss", "consumed_samples"


def step_rows(scalars: Scalars) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Train and validation rows shaped like the step log's, from TensorBoard's scalars: the report's curves for a
    run that has TensorBoard events but no step log (one from before StepStats, or a step log lost)."""
    def by_step(tag: str) -> dict[int, tuple[float, float]]:
        return {s: (w, v) for s, w, v in scalars.get(tag, [])}  # a later (resumed) value of a step wins

    loss, lr, samples = by_step(TRAIN_LOSS_TAG), by_step(LR_TAG), by_step(SAMPLES_TAG)
    train: list[dict[str, object]] = [
        {"kind": "train", "step": s, "loss": loss[s][1], "time": loss[s][0],
         **({"lr": lr[s][1]} if s in lr else {}),
         **({"consumed_samples": samples[s][1]} if s in samples else {})}
        for s in sorted(loss)]
    val: list[dict[str, object]] = [{"kind": "val", "step": s, "val_loss": v, "time": w}
                                    for s, (w, v) in sorted(by_step(VAL_LOSS_TAG).items())]
    return train, val
