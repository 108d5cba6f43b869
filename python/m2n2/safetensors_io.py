"""Reading and writing safetensors checkpoints piece by piece, never whole.

A checkpoint is one `.safetensors` file, or a folder in the Hugging Face layout
(`model.safetensors`, or shards named by `model.safetensors.index.json`). Every
file is validated by the `safetensors` library (`safe_open`: a corrupt or truncated
file is refused there); its header (8-byte little-endian length, then JSON) gives
each tensor's byte range, which we read with positional reads (`os.preadv`) straight
into buffers we own. We do not read through the library's memory map: mapped pages
count in the process's resident memory until the kernel evicts them, and a merge
promises a fixed budget. The library has no streaming writer (`save_file` takes
whole tensors), so `ShardWriter` writes the same format: the header first, then
each piece at its offset (`os.pwrite`), the files preallocated so that a full disk
fails before any work.
"""
import dataclasses
import json
import math
import mmap
import os
import struct

import torch

# safetensors' dtype names (the format's spec) and torch's.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_SUFFIX = ".safetensors.index.json"
ALIGN = 8  # headers are padded with spaces so that the data starts 8-byte aligned, as the library writes them


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as one: the message names the file and the tensors."""


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: its file and the absolute byte offset of its data."""

    name: str
    dtype: torch.dtype
    shape: tuple
    path: str
    offset: int
    nbytes: int

    @property
    def numel(self):
        return math.prod(self.shape)

    def is_floating_point(self):
        return self.dtype.is_floating_point


def read_header(path):
    """(entries name -> TensorEntry in file order, metadata dict or None) of one file,
    after the safetensors library has validated it."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
    except Exception as e:  # the library's SafetensorError, or an OSError
        raise CheckpointError(f"{path}: not a valid safetensors file: {e}") from None
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", None)
    entries = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if info["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info['dtype']}, which this reader does not know")
        begin, end = info["data_offsets"]
        entries[name] = TensorEntry(name, DTYPES[info["dtype"]], tuple(info["shape"]), path, 8 + length + begin,
                                    end - begin)
    if set(entries) != keys:  # cannot happen with a well-formed file; refuse rather than guess
        raise CheckpointError(f"{path}: the header does not list the tensors the library reads")
    return entries, metadata


class Checkpoint:
    """The tensors of a checkpoint (a file or a folder), validated, none read."""

    def __init__(self, path, role="checkpoint"):
        self.path = os.fspath(path)
        self.role = role
        if os.path.isfile(self.path):
            self.is_folder = False
            self.files = [self.path]
            self.index = None
        elif os.path.isdir(self.path):
            self.is_folder = True
            self._read_folder()
        else:
            raise CheckpointError(f"{role} {self.path}: no such file or folder")
        self.tensors = {}
        self.metadata = {}
        for f in self.files:
            entries, meta = read_header(f)
            self.metadata[f] = meta
            for name, e in entries.items():
                if name in self.tensors:
                    raise CheckpointError(f"{role} {self.path}: tensor {name} is in two files: "
                                          f"{os.path.basename(self.tensors[name].path)} and {os.path.basename(f)}")
                self.tensors[name] = e
        if self.index is not None:
            self._check_index()

    def _read_folder(self):
        names = sorted(os.listdir(self.path))
        indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
        shards = [n for n in names if n.endswith(".safetensors")]
        if len(indexes) > 1:
            raise CheckpointError(f"{self.role} {self.path}: several indexes ({', '.join(indexes)}): which one is the model?")
        if indexes:
            self.index_name = indexes[0]
            try:
                with open(os.path.join(self.path, indexes[0])) as f:
                    self.index = json.load(f)["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{self.role} {self.path}/{indexes[0]}: not an index of shards "
                                      f"(a JSON object with a weight_map): {e}") from None
            wanted = sorted(set(self.index.values()))
            missing = [n for n in wanted if not os.path.isfile(os.path.join(self.path, n))]
            if missing:
                raise CheckpointError(f"{self.role} {self.path}: the index names shards that are missing: {missing}")
            self.files = [os.path.join(self.path, n) for n in wanted]
        else:
            if len(shards) != 1:
                raise CheckpointError(
                    f"{self.role} {self.path}: a folder needs one .safetensors file or an index "
                    f"(*{INDEX_SUFFIX}); found {len(shards)} .safetensors files and no index")
            self.index_name, self.index = None, None
            self.files = [os.path.join(self.path, shards[0])]

    def _check_index(self):
        wrong = [f"{k} (index: {v}, found in: {os.path.basename(self.tensors[k].path) if k in self.tensors else 'none'})"
                 for k, v in sorted(self.index.items())
                 if k not in self.tensors or os.path.basename(self.tensors[k].path) != v]
        extra = sorted(set(self.tensors) - set(self.index))
        if wrong or extra:
            raise CheckpointError(f"{self.role} {self.path}: the index and the shards disagree: "
                                  f"{'; '.join(wrong + [f'{k} (in a shard, not in the index)' for k in extra])}")

    def other_files(self):
        """Relative paths of a folder's files that are not tensors (config, tokenizer)."""
        if not self.is_folder:
            return []
        skip = {os.path.basename(f) for f in self.files} | ({self.index_name} if self.index_name else set())
        out = []
        for root, _, files in os.walk(self.path):
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(root, f), self.path)
                if rel not in skip:
                    out.append(rel)
        return sorted(out)


class Reader:
    """Positional reads of tensor pieces into caller-owned buffers (one descriptor per
    file, opened on first use; safe to share between threads)."""

    def __init__(self):
        self._fds = {}

    def _fd(self, path):
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read(self, entry, start, count, dest):
        """Elements [start, start + count) of the flattened tensor into `dest` (a
        contiguous uint8 tensor of count * itemsize bytes)."""
        size = entry.dtype.itemsize
        view = memoryview(dest.numpy()).cast("B")
        fd, pos, done = self._fd(entry.path), entry.offset + start * size, 0
        while done < count * size:
            got = os.preadv(fd, [view[done:count * size]], pos + done)
            if got == 0:
                raise CheckpointError(f"{entry.path}: ended while reading {entry.name} (truncated while we read?)")
            done += got

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class MappedReader:
    """Zero-copy views of tensor pieces through private (copy-on-write) memory maps,
    for a pass that only reads. Mapped pages count in the process's memory once
    touched, so the caller releases each piece's pages (madvise MADV_DONTNEED: the
    file's pages stay in the page cache) before the next ones add up. A piece whose
    offset is not a multiple of its element size is copied (the kernels assume
    aligned elements)."""

    def __init__(self):
        self._maps = {}

    @staticmethod
    def available():
        return hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")

    def _map(self, path):
        m = self._maps.get(path)
        if m is None:
            with open(path, "rb") as f:
                m = self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return m

    def _range(self, entry, start, count):
        lo = entry.offset + start * entry.dtype.itemsize
        return lo, lo + count * entry.dtype.itemsize

    def view(self, entry, start, count):
        lo, _ = self._range(entry, start, count)
        t = torch.frombuffer(self._map(entry.path), dtype=entry.dtype, count=count, offset=lo) if count else \
            torch.empty(0, dtype=entry.dtype)
        return t.clone() if lo % entry.dtype.itemsize else t

    def prefetch(self, pieces):
        """Start reading the pages of `pieces` ((entry_a, entry_b, start, count)) from disk."""
        for *entries, start, count in pieces:
            for e in entries:
                self._advise(e, start, count, mmap.MADV_WILLNEED, outward=True)

    def release(self, pieces):
        for *entries, start, count in pieces:
            for e in entries:
                self._advise(e, start, count, mmap.MADV_DONTNEED, outward=False)

    def _advise(self, entry, start, count, advice, outward):
        lo, hi = self._range(entry, start, count)
        page = mmap.PAGESIZE
        lo, hi = (lo // page * page, -(-hi // page) * page) if outward else (-(-lo // page) * page, hi // page * page)
        m = self._map(entry.path)
        hi = min(hi, len(m))
        if hi > lo:
            m.madvise(advice, lo, hi - lo)

    def close(self):
        for m in self._maps.values():
            m.close()
        self._maps.clear()


def header_bytes(tensors, metadata):
    """The header of a file holding `tensors` ((name, dtype, shape) in data order):
    its bytes (length prefix included, padded to ALIGN) and each tensor's data offset."""
    header, offsets, pos = {}, {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        offsets[name] = pos
        pos += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGN)
    data_start = 8 + len(text)
    return struct.pack("<Q", len(text)) + text, {k: data_start + v for k, v in offsets.items()}, data_start + pos


def plan_shards(tensors, max_shard_size):
    """Tensors ((name, dtype, shape) in output order) packed greedily into shards of at
    most max_shard_size bytes of data; a larger tensor gets a shard of its own."""
    shards, current, size = [], [], 0
    for t in tensors:
        nbytes = math.prod(t[2]) * t[1].itemsize
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


class ShardWriter:
    """Files of known layout, written piece by piece at their offsets.

    `files`: file path -> [(name, dtype, shape), ...] in data order; `metadata`: the
    str -> str map of every header. The headers are written and the files
    preallocated at once (a full disk fails here, before any merging)."""

    def __init__(self, files, metadata):
        self.where = {}  # tensor name -> (fd, absolute data offset)
        self._fds = []
        for path, tensors in files.items():
            header, offsets, total = header_bytes(tensors, metadata)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            if total > len(header):
                try:
                    os.posix_fallocate(fd, 0, total)
                except (AttributeError, OSError) as e:
                    if isinstance(e, OSError) and e.errno not in (95, 22):  # not supported here: ENOTSUP, EINVAL
                        raise
                    os.ftruncate(fd, total)
            _pwrite_all(fd, memoryview(header), 0)
            for name, off in offsets.items():
                self.where[name] = (fd, off)

    def write(self, name, start, src):
        """Elements from `start` of tensor `name`: the bytes of `src` (a contiguous tensor)."""
        fd, off = self.where[name]
        data = memoryview(src.view(torch.uint8).numpy()).cast("B") if src.numel() else memoryview(b"")
        _pwrite_all(fd, data, off + start * src.element_size())

    def close(self, sync=True):
        for fd in self._fds:
            try:
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self._fds = []


def _pwrite_all(fd, data, pos):
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], pos + done)


def parse_size(text, name):
    """'5GB' (10^9), '1GiB' (2^30), '500MB', '4096' -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().upper().replace(" ", "")
        num = s.rstrip("KMGTIB")
        unit = s[len(num):]
        try:
            value = float(num) * units[unit]
        except (ValueError, KeyError):
            raise ValueError(f"{name} must be a size such as 5GB, 500MB, 1GiB or a number of bytes, "
                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {text!r}")
        value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value
