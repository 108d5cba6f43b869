"""`merge_checkpoints`: the merge of two safetensors checkpoints larger than memory.

The result is `merge_state_dicts` of the two models (the flat parameter vector's
split-point interpolation, docs/semantics.md), computed in chunks that never hold
more than `memory_budget` bytes:
- the floating-point tensors, in the flat vector's order, are cut into chunks (a
  tensor larger than a chunk, such as an embedding, into several) that fill a few
  fixed buffers ("slots"); a chunk is one call of the multi-tensor op at its global
  offset, so the split and the noise see global element indices;
- slerp with one angle needs the whole vectors' dot product and norms: pass 1 streams
  `interp_sums` over the chunks (and compares the non-floating tensors, which must be
  equal in both models); pass 2 writes each chunk with `split_interpolate(..., sums=)`;
- reading the next chunks, computing one and writing the previous one overlap (a
  reader and a writer thread, the op in the main thread);
- everything is checked before anything is written, and the output goes to a
  temporary name beside OUT, renamed at the end: an error, a non-finite value, Ctrl-C
  or a full disk leaves no OUT (and an existing OUT untouched).
"""
import concurrent.futures as cf
import dataclasses
import json
import math
import os
import shutil
import time
import uuid

import numpy as np
import torch

import m2n2_kernels as mk
from m2n2_kernels import crossover as _crossover

from . import safetensors_io as sio
from .merge import MERGE_DTYPES, as_out_dtype, canonical_order, check_same_models, flat_names, resolve_split

SLOTS = 4  # buffers in flight: two being read ahead, one computed, one written
PREFETCH = 2  # chunks read ahead (<= SLOTS - 2, so a slot is free before it is read into)
BUDGET_SHARE = 0.9  # of memory_budget for the slots; the rest for the small things around them
PAD = 64  # byte alignment of each region in a slot
MIN_BUDGET = 1 << 20
# Pass 1 through memory maps (no copy) where the platform can release pages and the
# budget has room for the kernel's mapping granularity: a fault may map a whole large
# folio of the page cache (a few MB) beyond the chunk. Pass 1 leaves the slots
# untouched, so their share of the budget absorbs that; below this budget pass 1
# copies into the slots like pass 2.
MAPPED_PASS1_MIN_BUDGET = 64 << 20


class NonFiniteError(ValueError):
    """A NaN or an infinity met while merging (in an input, or made by the merge)."""


@dataclasses.dataclass
class _Piece:
    entry: sio.TensorEntry
    start: int  # first element, in the flattened tensor
    count: int
    a_at: int  # byte offsets in the slot
    b_at: int
    cast_at: int  # -1: the output has the input's dtype (written in place over a)


@dataclasses.dataclass
class _Chunk:
    merge: bool  # floating-point pieces to merge, or other tensors to compare and copy
    offset: int  # global flat index of its first element (merge chunks)
    pieces: list

    @property
    def numel(self):
        return sum(p.count for p in self.pieces)

    def read_bytes(self, both=True):
        return sum(p.count * p.entry.dtype.itemsize for p in self.pieces) * (2 if both else 1)


def _align(x):
    return -(-x // PAD) * PAD


def plan_chunks(entries, names, slot_bytes, out_dtype, merge, flat_start=0):
    """Chunks of the tensors `names` (in order) that each fit one slot of slot_bytes:
    a and b (and, when out_dtype differs, the cast output) of every piece."""
    chunks, pieces, used, offset = [], [], 0, flat_start

    def close():
        nonlocal pieces, used
        if pieces:
            chunks.append(_Chunk(merge, offset - sum(p.count for p in pieces), pieces))
        pieces, used = [], 0

    for name in names:
        e = entries[name]
        size = e.dtype.itemsize
        cast = 0 if (not merge or out_dtype in (None, e.dtype)) else out_dtype.itemsize
        start = 0
        while start < e.numel:
            room = slot_bytes - used - (3 if cast else 2) * PAD
            count = min(e.numel - start, max(room, 0) // (2 * size + cast))
            if count == 0:
                if not pieces:
                    raise ValueError(f"memory budget too small for one element of {name}")
                close()
                continue
            a_at = used
            b_at = _align(a_at + count * size)
            cast_at = _align(b_at + count * size) if cast else -1
            used = _align((cast_at + count * cast) if cast else (b_at + count * size))
            pieces.append(_Piece(e, start, count, a_at, b_at, cast_at))
            start += count
            offset += count
    close()
    return chunks


def _views(slot, chunk, which):
    """The pieces of a ("a") or b ("b") in a slot, as 1-D tensors of their dtype."""
    out = []
    for p in chunk.pieces:
        at = p.a_at if which == "a" else p.b_at
        out.append(slot[at:at + p.count * p.entry.dtype.itemsize].view(p.entry.dtype))
    return out


def _pass2_bytes(chunk, out_dtype):
    """Bytes read and written for a chunk in pass 2 (the progress bar's unit)."""
    written = chunk.numel * out_dtype.itemsize if (chunk.merge and out_dtype) else chunk.read_bytes(False)
    return chunk.read_bytes(chunk.merge) + written


def _first_nonfinite(t):
    """Index of the first NaN or infinity of a 1-D tensor, or None (in blocks, so that
    the mask never grows past a megabyte)."""
    step = 1 << 20
    for s in range(0, t.numel(), step):
        bad = (~torch.isfinite(t[s:s + step])).nonzero()
        if bad.numel():
            return s + int(bad[0])
    return None


def _element(entry, flat):
    idx = tuple(int(i) for i in np.unravel_index(flat, entry.shape)) if entry.shape else ()
    return f"{entry.name}[{', '.join(map(str, idx))}]"


def _angles(sums, omega):
    s = sums.tolist()
    rows = [[s[0][k] + s[1][k] for k in range(3)]] if omega == "global" else s
    out = []
    for dot, na, nb in rows:
        denom = math.sqrt(na * nb)
        out.append(math.degrees(math.acos(max(-1.0, min(1.0, dot / denom)))) if denom > 0 else 0.0)
    return out


def _peak_rss():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _check_out_path(out, a, b, force):
    o = os.path.realpath(out)
    for role, p in (("A", a), ("B", b)):
        p = os.path.realpath(p)
        if o == p:
            raise ValueError(f"OUT {out} is input {role}: write the merge elsewhere")
        if o.startswith(p + os.sep):
            raise ValueError(f"OUT {out} lies inside input {role} ({p})")
        if p.startswith(o + os.sep):
            raise ValueError(f"OUT {out} holds input {role} ({p}): replacing it would delete an input")
    if os.path.lexists(out) and not force:
        raise FileExistsError(f"OUT {out} exists: pass --force (force=True) to replace it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the folder of OUT does not exist: {parent}")


def _read_order(order):
    if order is None or isinstance(order, (list, tuple)):
        return order
    with open(order) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


class _Pipeline:
    """Chunks through SLOTS buffers: reads PREFETCH ahead on one thread, the caller's
    `compute` on this one, writes behind on another. A slot is read into only after
    the write of the chunk that used it before has finished."""

    def __init__(self, slot_bytes):
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8) for _ in range(SLOTS)]

    def run(self, chunks, read, compute, write=None, progress=None):
        reads, writes = {}, {}
        reader = cf.ThreadPoolExecutor(1, thread_name_prefix="m2n2-read")
        writer = cf.ThreadPoolExecutor(1, thread_name_prefix="m2n2-write")

        def read_into(i):
            if i - SLOTS in writes:  # the slot's previous chunk must be on disk first
                writes.pop(i - SLOTS).result()
            slot = self.slots[i % SLOTS]
            read(chunks[i], slot)
            return slot

        try:
            for i in range(min(PREFETCH, len(chunks))):
                reads[i] = reader.submit(read_into, i)
            for i, chunk in enumerate(chunks):
                slot = reads.pop(i).result()
                if i + PREFETCH < len(chunks):
                    reads[i + PREFETCH] = reader.submit(read_into, i + PREFETCH)
                compute(chunk, slot)
                if write is not None:
                    writes[i] = writer.submit(write, chunk, slot)
                if progress is not None:
                    progress(chunk)
            for f in list(writes.values()):
                f.result()
        finally:  # on an error or Ctrl-C: drop what has not started, wait for what has
            reader.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)


def merge_checkpoints(a, b, out, *, split, w, method="slerp", omega="global", noise_std=0.0, seed=0, out_dtype=None,
                      order=None, max_shard_size="5GB", memory_budget="1GB", force=False, progress=True,
                      backend=None):
    """Merge checkpoints `a` and `b` (a .safetensors file each, or Hugging Face model
    folders) into `out`, streaming within `memory_budget` bytes: bit for bit
    `merge_state_dicts(load(a), load(b), ...)` given the same slerp sums.

    split, w, method, omega, noise_std, seed, out_dtype and order as merge_state_dicts
    (`order` may also be a file of names, one per line). `out` has a's layout: a file
    for a file, a folder (shards of at most max_shard_size bytes and an index when
    there are several, a's other files copied) for a folder; an existing `out` is
    refused unless `force`. Returns a summary dict (elements, angle, seconds, bytes
    read and written, memory).
    """
    t0 = time.perf_counter()
    budget = sio.parse_size(memory_budget, "memory_budget")
    shard_size = sio.parse_size(max_shard_size, "max_shard_size")
    if budget < MIN_BUDGET:
        raise ValueError(f"memory_budget must be at least 1MiB, got {memory_budget!r}")
    out_dtype = as_out_dtype(out_dtype)
    out = os.fspath(out)
    ca, cb = sio.Checkpoint(a, "A"), sio.Checkpoint(b, "B")
    check_same_models(ca.tensors, cb.tensors)
    names = flat_names(ca.tensors, _read_order(order))
    bad = [f"{k} ({ca.tensors[k].dtype})" for k in names if ca.tensors[k].dtype not in MERGE_DTYPES]
    if bad:
        raise ValueError(f"tensors of a dtype the merge cannot compute (float64, float32, float16, bfloat16): {bad}")
    others = canonical_order([k for k in ca.tensors if k not in set(names)])
    numels = [ca.tensors[k].numel for k in names]
    n = sum(numels)
    at = resolve_split(split, names, numels)
    # (the seed as given: the op takes it again; check_op_scalars returns its int64 form)
    at, w, method, omega, noise_std, _, _ = _crossover.check_op_scalars(n, at, w, method, omega, noise_std, seed, 0)
    _check_out_path(out, ca.path, cb.path, force)

    job = _StreamMerge(ca, cb, names, others, budget, out_dtype, progress,
                       dict(w=w, method=method, omega=omega, noise_std=noise_std, seed=seed, backend=backend), at)
    try:
        sums = job.pass1()
        info = {"a": os.path.abspath(ca.path), "b": os.path.abspath(cb.path), "split": at, "w": w, "method": method,
                "omega": omega, "noise_std": noise_std, "seed": seed, "elements": n,
                "order": "canonical" if order is None else "given",
                "out_dtype": None if out_dtype is None else str(out_dtype).replace("torch.", ""),
                "sums": None if sums is None else sums.tolist()}
        files = _write_output(job, out, _output_layout(ca, names, others, out_dtype, shard_size), info, sums, force)
    finally:
        job.reader.close()
    return {
        "out": out, "files": files, "elements": n, "tensors": len(names), "copied_tensors": len(others),
        "method": method, "omega": omega, "angle_degrees": None if sums is None else _angles(sums, omega),
        "seconds": time.perf_counter() - t0, "read_bytes": job.read_bytes, "written_bytes": job.written_bytes,
        "buffer_bytes": SLOTS * job.slot_bytes, "peak_rss_bytes": _peak_rss(),
    }


class _StreamMerge:
    """The two passes over the chunks of one merge, and what they count."""

    def __init__(self, ca, cb, names, others, budget, out_dtype, progress, op_args, split):
        self.ca, self.cb, self.out_dtype, self.progress = ca, cb, out_dtype, progress
        self.op_args, self.split = op_args, split
        self.budget = budget
        self.slot_bytes = int(budget * BUDGET_SHARE) // SLOTS
        self.merge_chunks = plan_chunks(ca.tensors, names, self.slot_bytes, out_dtype, True)
        self.copy_chunks = plan_chunks(ca.tensors, others, self.slot_bytes, None, False)
        self.pipe = _Pipeline(self.slot_bytes)
        self.reader = sio.Reader()
        self.read_bytes = self.written_bytes = 0
        self.sums = None

    def _bar(self, total, desc):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000, disable=not self.progress,
                    leave=True, dynamic_ncols=True)

    def _read(self, chunk, slot, both=True):
        for p in chunk.pieces:
            nb = p.count * p.entry.dtype.itemsize
            self.reader.read(p.entry, p.start, p.count, slot[p.a_at:p.a_at + nb])
            if both:
                self.reader.read(self.cb.tensors[p.entry.name], p.start, p.count, slot[p.b_at:p.b_at + nb])
        self.read_bytes += chunk.read_bytes(both)

    # Pass 1: the slerp sums, and the non-floating tensors compared; nothing is written.
    def pass1(self):
        """The whole vectors' sums (slerp), None (lerp); raises on a non-finite input
        or on non-floating tensors that differ."""
        slerp = self.op_args["method"] == "slerp"
        self.sums = torch.zeros(2, 3, dtype=torch.float64) if slerp else None
        chunks = (self.merge_chunks if slerp else []) + self.copy_chunks
        if chunks:
            with self._bar(sum(c.read_bytes() for c in chunks), "pass 1/2: sums" if slerp else "pass 1/2: compare") as pb:
                if self.budget >= MAPPED_PASS1_MIN_BUDGET and sio.MappedReader.available():
                    self._pass1_mapped(chunks, pb)
                else:
                    self.pipe.run(chunks, self._read, lambda c, slot: self._pass1_views(
                        c, _views(slot, c, "a"), _views(slot, c, "b")), progress=lambda c: pb.update(c.read_bytes()))
        if slerp and not bool(torch.isfinite(self.sums).all()):
            raise NonFiniteError(f"the slerp sums overflow float64 ({self.sums.tolist()}): the models' values are too "
                                 "large; OUT was not created")
        return self.sums

    def _pass1_mapped(self, chunks, pb):
        """Pass 1 without copies: the op reads the pages of the files through private
        maps; each chunk's pages are released from the process once it is done (and the
        next chunk's read ahead meanwhile), so at most one chunk of pages is resident."""
        mapped = sio.MappedReader()
        pairs = lambda c: [(p.entry, self.cb.tensors[p.entry.name], p.start, p.count) for p in c.pieces]  # noqa: E731
        try:
            for i, chunk in enumerate(chunks):
                if i + 1 < len(chunks):
                    mapped.prefetch(pairs(chunks[i + 1]))
                av = [mapped.view(ea, start, count) for ea, _, start, count in pairs(chunk)]
                bv = [mapped.view(eb, start, count) for _, eb, start, count in pairs(chunk)]
                self._pass1_views(chunk, av, bv)
                del av, bv
                mapped.release(pairs(chunk))
                self.read_bytes += chunk.read_bytes()
                pb.update(chunk.read_bytes())
        finally:
            mapped.close()

    def _pass1_views(self, chunk, av, bv):
        if not chunk.merge:
            for p, x, y in zip(chunk.pieces, av, bv):
                xb, yb = x.view(torch.uint8), y.view(torch.uint8)
                if not torch.equal(xb, yb):
                    first = int((xb != yb).nonzero()[0]) // x.element_size()
                    raise ValueError(f"{p.entry.name} is not floating point and differs between A and B "
                                     f"(first at {_element(p.entry, p.start + first)}): it cannot be merged")
            return
        s = mk.interp_sums(av, bv, self.split, index_offset=chunk.offset, backend=self.op_args["backend"])
        if not bool(torch.isfinite(s).all()):
            for role, views in (("A", av), ("B", bv)):
                for p, x in zip(chunk.pieces, views):
                    i = _first_nonfinite(x)
                    if i is not None:
                        raise NonFiniteError(f"{role} has a non-finite value at {_element(p.entry, p.start + i)}: "
                                             f"{x[i].item()}; OUT was not created")
        self.sums.add_(s)

    # Pass 2: every chunk merged (or copied) and written at its offset.
    def pass2(self, writer):
        chunks = self.merge_chunks + self.copy_chunks

        def read(chunk, slot):
            self._read(chunk, slot, both=chunk.merge)

        def write(chunk, slot):
            for p, src in zip(chunk.pieces, self._outputs(chunk, slot)):
                writer.write(p.entry.name, p.start, src)
                self.written_bytes += src.numel() * src.element_size()

        with self._bar(sum(_pass2_bytes(c, self.out_dtype) for c in chunks), "pass 2/2: merge") as pb:
            self.pipe.run(chunks, read, self._merge_chunk, write,
                          progress=lambda c: pb.update(_pass2_bytes(c, self.out_dtype)))

    def _outputs(self, chunk, slot):
        """The output pieces: over a, or in the cast region when out_dtype differs."""
        out = []
        for p in chunk.pieces:
            if p.cast_at >= 0:
                out.append(slot[p.cast_at:p.cast_at + p.count * self.out_dtype.itemsize].view(self.out_dtype))
            else:
                out.append(slot[p.a_at:p.a_at + p.count * p.entry.dtype.itemsize].view(p.entry.dtype))
        return out

    def _merge_chunk(self, chunk, slot):
        if not chunk.merge:
            return
        av, bv = _views(slot, chunk, "a"), _views(slot, chunk, "b")
        # The split clamped to the chunk's end: the same sides, and no "split past the
        # end" for a first chunk that ends before it.
        local = min(self.split, chunk.offset + chunk.numel)
        mk.split_interpolate(av, bv, local, out=av, index_offset=chunk.offset, sums=self.sums, **self.op_args)
        for p, x, y, o in zip(chunk.pieces, av, bv, self._outputs(chunk, slot)):
            if p.cast_at >= 0:
                o.copy_(x)
            if not bool(torch.isfinite(o.sum())):  # fast; the exact search only when it is not finite
                i = _first_nonfinite(o)
                if i is not None:
                    raise NonFiniteError(
                        f"the merge of {_element(p.entry, p.start + i)} is {o[i].item()} (B there: {y[i].item()}): a "
                        f"non-finite input, or a value past the output dtype's range; OUT was not created")


def _output_layout(ca, names, others, out_dtype, shard_size):
    """([(file name in OUT, or None for a single file, [(name, dtype, shape), ...])],
    the index's file name or None)."""
    dtype_of = {k: (out_dtype or ca.tensors[k].dtype) for k in names}
    dtype_of.update({k: ca.tensors[k].dtype for k in others})
    tensors = [(k, dtype_of[k], ca.tensors[k].shape) for k in canonical_order(list(names) + list(others))]
    if not ca.is_folder:
        return [(None, tensors)], None
    shards = sio.plan_shards(tensors, shard_size)
    if len(shards) == 1:
        single = os.path.basename(ca.files[0]) if len(ca.files) == 1 else "model.safetensors"
        return [(single, shards[0])], None
    total = len(shards)
    index = ca.index_name or "model" + sio.INDEX_SUFFIX
    stem = index[: -len(sio.INDEX_SUFFIX)]
    return [(f"{stem}-{i + 1:05d}-of-{total:05d}.safetensors", s) for i, s in enumerate(shards)], index


def _write_output(job, out, layout, info, sums, force):
    """Pass 2 into a temporary file or folder beside OUT, then renamed to OUT; on any
    error (Ctrl-C included) the temporary is deleted and OUT left as it was."""
    shards, index_name = layout
    ca = job.ca
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.m2n2-tmp-{uuid.uuid4().hex[:8]}")
    try:
        if ca.is_folder:
            os.mkdir(tmp)
            files = {os.path.join(tmp, f): ts for f, ts in shards}
        else:
            files = {tmp: shards[0][1]}
        writer = sio.ShardWriter(files, {"format": "pt", "m2n2_merge": json.dumps(info, separators=(",", ":"))})
        try:
            job.pass2(writer)
        except BaseException:
            writer.close(sync=False)
            raise
        writer.close(sync=True)
        if ca.is_folder:
            if index_name:
                weight_map = {name: f for f, ts in shards for name, _, _ in ts}
                total_size = sum(math.prod(s) * d.itemsize for _, ts in shards for _, d, s in ts)
                with open(os.path.join(tmp, index_name), "w") as f:
                    json.dump({"metadata": {"total_size": total_size, "m2n2_merge": info}, "weight_map": weight_map},
                              f, indent=2)
                    f.write("\n")
            for rel in ca.other_files():
                dest = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(os.path.join(ca.path, rel), dest)
        _replace(tmp, out, force)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return [f or os.path.basename(out) for f, _ in shards] + ([index_name] if index_name else [])


def _replace(tmp, out, force):
    """Put tmp in out's place: an existing out (force) is moved aside first, then
    deleted, so that out is at every moment either the old one or the new one."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
        return
    if not force:
        raise FileExistsError(f"OUT {out} appeared while merging: pass --force (force=True) to replace it")
    if os.path.isdir(out) and not os.path.islink(out):
        old = f"{tmp}-old"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    elif os.path.isdir(tmp):  # a folder in place of a file
        os.remove(out)
        os.rename(tmp, out)
    else:
        os.replace(tmp, out)
