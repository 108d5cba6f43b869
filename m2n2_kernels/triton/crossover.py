"""Split-point crossover in Triton (the GPU path when the CUDA C++ kernels were
not compiled; CPU tensors under TRITON_INTERPRET=1).

Semantics: reference.split_interpolate / crossover_batch (docs/semantics.md). Two passes:
1. slerp only: one reduction kernel writes, per program, the partial sums
   (dot, |a|^2, |b|^2) of each side of the split, each one a tree sum over the
   program's block in fp64 (see _side_sums_block for why not fp32); torch then
   sums the partials (a fixed order, so the result is deterministic) and computes
   the coefficients in fp64 on the device, without a host sync (coefficients of
   lerp are computed inside the kernel from w).
2. one elementwise kernel: child = ca * a + cb * b in fp32 (fp64 for fp64), two
   roundings (launched with enable_fp_fusion=False: no FMA contraction, as the C++
   code), + noise_std * z with z from philox.py, rounded once to the storage type.

Indices are int64 throughout; every kernel takes `block_offset`, the first block
it handles (0 in normal use), so that a test can run only the last blocks of a
vector longer than 2**32 elements.
"""
import itertools

import torch
import triton
import triton.language as tl

from .. import reference
from ._utils import MAX_GRID_Y, compute_dtype, double_bits, f64_from_bits, i64, launch_opts, on_device, to_storage
from .philox import normals_block

# Elements per program. The reduction reads two inputs and writes 48 bytes per
# program; the elementwise pass reads two, writes one, and may run Philox.
SUM_BLOCK = 4096
SUM_WARPS = 8
INTERP_BLOCK = 2048
INTERP_WARPS = 4

_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Device helpers.
# ---------------------------------------------------------------------------


@triton.jit
def _lerp_coefs(w):
    """(ca0, cb0, ca1, cb1) in fp64 from w, as reference.split_coefs: t = w, 1 - w."""
    t1 = 1.0 - w
    return 1.0 - w, w, 1.0 - t1, t1


@triton.jit
def _side_sums_block(a_ptr, b_ptr, n, local_split, block, BLOCK: tl.constexpr):
    """Tree sums over one block of (dot, aa, bb) for side 0 (index < local_split)
    and side 1, in fp64. Not fp32: the lerp fallback at sin(omega) <= 1e-6 needs the
    angle of (anti)parallel sides exactly, e.g. a side of one element (split = 1 or
    n - 1 with omega="segment"): with fp32 products cos(omega) comes out as
    -1 + 6e-8, sin(omega) ~ 3e-4, and the coefficients explode where the reference
    falls back to lerp. fp64 products of fp32/fp16/bf16 values are exact."""
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    y = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    side0 = offs < local_split
    xy = x * y
    xx = x * x
    yy = y * y
    zero = tl.zeros_like(xy)
    d0 = tl.sum(tl.where(side0, xy, zero), axis=0)
    a0 = tl.sum(tl.where(side0, xx, zero), axis=0)
    b0 = tl.sum(tl.where(side0, yy, zero), axis=0)
    d1 = tl.sum(tl.where(side0, zero, xy), axis=0)
    a1 = tl.sum(tl.where(side0, zero, xx), axis=0)
    b1 = tl.sum(tl.where(side0, zero, yy), axis=0)
    return d0, a0, b0, d1, a1, b1


@triton.jit
def _store_sums(part_ptr, row, d0, a0, b0, d1, a1, b1):
    p = part_ptr + row * 6
    tl.store(p, d0)
    tl.store(p + 1, a0)
    tl.store(p + 2, b0)
    tl.store(p + 3, d1)
    tl.store(p + 4, a1)
    tl.store(p + 5, b1)


@triton.jit
def _interp_block(
    a_ptr, b_ptr, out_ptr, n, local_split, ca0, cb0, ca1, cb1, sigma, seed_lo, seed_hi, stream_lo, stream_hi,
    first_index, block, BLOCK: tl.constexpr, CDT: tl.constexpr, NOISE: tl.constexpr, PHASE: tl.constexpr,
):
    """One block of the elementwise pass. With noise, blocks are aligned to the
    global counter groups: block k covers local elements k * BLOCK - PHASE + [0, BLOCK),
    PHASE = first_index & 3, so each program draws whole groups of four."""
    offs = block * BLOCK - PHASE + tl.arange(0, BLOCK)
    mask = (offs >= 0) & (offs < n)
    x = tl.load(a_ptr + offs, mask=mask, other=0.0).to(CDT)
    y = tl.load(b_ptr + offs, mask=mask, other=0.0).to(CDT)
    side0 = offs < local_split
    ca = tl.where(side0, ca0.to(CDT), ca1.to(CDT))
    cb = tl.where(side0, cb0.to(CDT), cb1.to(CDT))
    child = ca * x + cb * y
    if NOISE:
        first_group = (first_index >> 2) + block * (BLOCK // 4)
        z = normals_block(first_group, seed_lo, seed_hi, stream_lo, stream_hi, BLOCK)
        child = child + sigma.to(CDT) * z.to(CDT)
    tl.store(out_ptr + offs, to_storage(child, out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Kernels: one tensor (a piece of the concatenated vector).
# ---------------------------------------------------------------------------


@triton.jit
def _split_sums_kernel(a_ptr, b_ptr, part_ptr, n, local_split, part_base, block_offset, BLOCK: tl.constexpr):
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    d0, a0, b0, d1, a1, b1 = _side_sums_block(a_ptr, b_ptr, i64(n), i64(local_split), block, BLOCK)
    _store_sums(part_ptr, i64(part_base) + block - i64(block_offset), d0, a0, b0, d1, a1, b1)


@triton.jit
def _split_interp_kernel(
    a_ptr, b_ptr, out_ptr, coef_ptr, w_bits, n, local_split, sigma_bits, seed_lo, seed_hi, stream_lo, stream_hi,
    first_index, block_offset, BLOCK: tl.constexpr, CDT: tl.constexpr, LERP: tl.constexpr,
    NOISE: tl.constexpr, PHASE: tl.constexpr,
):
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    if LERP:
        ca0, cb0, ca1, cb1 = _lerp_coefs(f64_from_bits(w_bits))
    else:  # slerp: computed on the device from the reduction
        ca0 = tl.load(coef_ptr)
        cb0 = tl.load(coef_ptr + 1)
        ca1 = tl.load(coef_ptr + 2)
        cb1 = tl.load(coef_ptr + 3)
    _interp_block(
        a_ptr, b_ptr, out_ptr, i64(n), i64(local_split), ca0, cb0, ca1, cb1, f64_from_bits(sigma_bits),
        tl.cast(seed_lo, tl.uint32), tl.cast(seed_hi, tl.uint32), tl.cast(stream_lo, tl.uint32),
        tl.cast(stream_hi, tl.uint32), i64(first_index), block, BLOCK, CDT, NOISE, PHASE,
    )


# ---------------------------------------------------------------------------
# Kernels: a batch of children from an archive. Grid (block, child).
# ---------------------------------------------------------------------------


@triton.jit
def _batch_sums_kernel(
    archive_ptr, ia_ptr, ib_ptr, split_ptr, part_ptr, n, blocks_per_row, child_base, block_offset,
    BLOCK: tl.constexpr,
):
    n = i64(n)
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    k = i64(child_base) + tl.program_id(1).to(tl.int64)
    a_row = archive_ptr + tl.load(ia_ptr + k) * n
    b_row = archive_ptr + tl.load(ib_ptr + k) * n
    d0, a0, b0, d1, a1, b1 = _side_sums_block(a_row, b_row, n, tl.load(split_ptr + k), block, BLOCK)
    row = k * i64(blocks_per_row) + block - i64(block_offset)
    _store_sums(part_ptr, row, d0, a0, b0, d1, a1, b1)


@triton.jit
def _batch_interp_kernel(
    archive_ptr, ia_ptr, ib_ptr, split_ptr, w_ptr, coef_ptr, out_ptr, n, sigma_bits, seed_lo, seed_hi,
    child_base, block_offset, BLOCK: tl.constexpr, CDT: tl.constexpr, LERP: tl.constexpr, NOISE: tl.constexpr,
):
    n = i64(n)
    block = i64(block_offset) + tl.program_id(0).to(tl.int64)
    k = i64(child_base) + tl.program_id(1).to(tl.int64)
    if LERP:
        ca0, cb0, ca1, cb1 = _lerp_coefs(tl.load(w_ptr + k))
    else:
        ca0 = tl.load(coef_ptr + 4 * k)
        cb0 = tl.load(coef_ptr + 4 * k + 1)
        ca1 = tl.load(coef_ptr + 4 * k + 2)
        cb1 = tl.load(coef_ptr + 4 * k + 3)
    _interp_block(
        archive_ptr + tl.load(ia_ptr + k) * n, archive_ptr + tl.load(ib_ptr + k) * n, out_ptr + k * n, n,
        tl.load(split_ptr + k), ca0, cb0, ca1, cb1, f64_from_bits(sigma_bits), tl.cast(seed_lo, tl.uint32),
        tl.cast(seed_hi, tl.uint32), k.to(tl.uint32), (k >> 32).to(tl.uint32), 0, block, BLOCK, CDT, NOISE, 0,
    )


# ---------------------------------------------------------------------------
# Coefficients of slerp, in fp64 on the device (no host sync).
# ---------------------------------------------------------------------------


def _slerp_coefs(sums, t0, t1, omega):
    """sums [..., 2, 3] fp64 (dot, aa, bb per side); t0, t1 floats or tensors [...].
    Returns [..., 4] = (ca0, cb0, ca1, cb1), as reference.slerp_coefs / interp.h."""
    if omega == "global":
        sides = (sums[..., 0, :] + sums[..., 1, :]).unsqueeze(-2)  # one angle for both
    else:
        sides = sums
    dot, aa, bb = sides.unbind(-1)
    na, nb = aa.sqrt(), bb.sqrt()
    angle = torch.acos((dot / (na * nb)).clamp(-1.0, 1.0))
    so = torch.sin(angle)
    # NaN (zero norm) compares false: falls back to lerp, as the reference does.
    use = (na > 0) & (nb > 0) & (so > reference.SLERP_MIN_SIN)
    coefs = []
    for side, t in enumerate((t0, t1)):
        i = 0 if omega == "global" else side
        ang, s, u = angle[..., i], so[..., i], use[..., i]
        coefs.append(torch.where(u, torch.sin((1 - t) * ang) / s, 1 - t))
        coefs.append(torch.where(u, torch.sin(t * ang) / s, t))
    return torch.stack(torch.broadcast_tensors(*coefs), dim=-1).contiguous()


# ---------------------------------------------------------------------------
# Host entry points (arguments already checked by m2n2_kernels/crossover.py).
# ---------------------------------------------------------------------------


def split_interpolate_out(a, b, out, split, w, method, omega, noise_std, seed, stream, index_offset, sums=None,
                          index_offsets=None):
    """out = split_interpolate(a, b, ...) for lists of contiguous tensors taken in
    order as one vector whose element 0 has global index `index_offset` (a[i], b[i]
    and out[i] share a dtype, which may differ from one i to the next); or, given
    `index_offsets`, entries whose element 0 has global index index_offsets[i]. out[i]
    may be a[i] or b[i]: every element is read before it is written, by one program.
    `sums` (float64 [2, 3]) replaces the angle's sums over a and b. Arguments already
    checked (m2n2_kernels/crossover.py)."""
    numels = [t.numel() for t in a]
    if sum(numels) == 0:
        return
    firsts = _firsts(numels, index_offset, index_offsets)
    with on_device(a[0].device):
        _split_interpolate(a, b, out, numels, split, w, method, omega, noise_std, seed, stream, firsts, sums)


def interp_sums(a, b, split, index_offset, index_offsets=None):
    """float64 [2, 3]: (dot, |a|^2, |b|^2) on each side of the global split, over the
    lists a, b (one vector whose element 0 has global index index_offset, or entries
    whose element 0 has global index index_offsets[i])."""
    numels = [t.numel() for t in a]
    if sum(numels) == 0:
        return torch.zeros((2, 3), dtype=torch.float64, device=a[0].device)
    with on_device(a[0].device):
        return _list_sums(a, b, numels, _local_splits(numels, split, _firsts(numels, index_offset, index_offsets)))


def _firsts(numels, index_offset, index_offsets):
    """The global index of each entry's element 0: the given offsets, or entries that
    follow each other from index_offset."""
    if index_offsets is not None:
        return [int(o) for o in index_offsets]
    return [index_offset + s for s in [0, *itertools.accumulate(numels)][:-1]]


def _local_splits(numels, split, firsts):
    """Each entry's side-0 length: its elements with global index < split."""
    return [min(max(split - f, 0), m) for f, m in zip(firsts, numels)]


def _list_sums(a, b, numels, local_splits):
    """The block partials of every tensor in one workspace, summed in a fixed order."""
    blocks = [triton.cdiv(m, SUM_BLOCK) for m in numels]
    part = torch.empty((sum(blocks), 6), dtype=torch.float64, device=a[0].device)
    row = 0
    for x, y, m, cut, nb in zip(a, b, numels, local_splits, blocks):
        if nb:
            _split_sums_kernel[(nb,)](x, y, part, m, cut, row, 0, BLOCK=SUM_BLOCK, **launch_opts(SUM_WARPS))
        row += nb
    return part.sum(dim=0).view(2, 3)


def _split_interpolate(a, b, out, numels, split, w, method, omega, noise_std, seed, stream, firsts, sums):
    seed &= 2**64 - 1
    stream &= 2**64 - 1
    local_splits = _local_splits(numels, split, firsts)
    lerp = method == "lerp"
    coefs = None
    if not lerp:
        if sums is None:
            sums = _list_sums(a, b, numels, local_splits)
        coefs = _slerp_coefs(sums.view(2, 3), w, 1 - w, omega)
    noise = noise_std != 0.0
    for x, y, o, m, cut, first in zip(a, b, out, numels, local_splits, firsts):
        if m == 0:
            continue
        phase = first & 3 if noise else 0
        grid = (triton.cdiv(m + phase, INTERP_BLOCK),)
        _split_interp_kernel[grid](
            x, y, o, o if coefs is None else coefs,  # coef_ptr is not read for lerp
            double_bits(w), m, cut, double_bits(noise_std), seed & _MASK32, seed >> 32,
            stream & _MASK32, stream >> 32, first, 0,
            BLOCK=INTERP_BLOCK, CDT=compute_dtype(x.dtype), LERP=lerp, NOISE=noise, PHASE=phase, **launch_opts(INTERP_WARPS),
        )


def crossover_batch_out(archive, ia, ib, split, w, out, method, omega, noise_std, seed):
    """out[k] = split_interpolate(archive[ia[k]], archive[ib[k]], split[k], w[k],
    stream=k): one reduction launch and one elementwise launch (2-D grids), per
    65535 children."""
    k_total, n = out.shape
    if k_total == 0 or n == 0:
        return
    with on_device(archive.device):
        _crossover_batch(archive, ia, ib, split, w, out, k_total, n, method, omega, noise_std, seed)


def _crossover_batch(archive, ia, ib, split, w, out, k_total, n, method, omega, noise_std, seed):
    ia, ib, split, w = (t.contiguous() for t in (ia, ib, split, w))
    cdt = compute_dtype(archive.dtype)
    seed &= 2**64 - 1
    lerp = method == "lerp"
    coefs = None
    if not lerp:
        blocks = triton.cdiv(n, SUM_BLOCK)
        part = torch.empty((k_total, blocks, 6), dtype=torch.float64, device=archive.device)
        for base in range(0, k_total, MAX_GRID_Y):
            _batch_sums_kernel[(blocks, min(MAX_GRID_Y, k_total - base))](
                archive, ia, ib, split, part, n, blocks, base, 0, BLOCK=SUM_BLOCK, **launch_opts(SUM_WARPS),
            )
        coefs = _slerp_coefs(part.sum(dim=1).view(k_total, 2, 3), w, 1 - w, omega)
    for base in range(0, k_total, MAX_GRID_Y):
        _batch_interp_kernel[(triton.cdiv(n, INTERP_BLOCK), min(MAX_GRID_Y, k_total - base))](
            archive, ia, ib, split, w, w if coefs is None else coefs,  # coef_ptr is not read for lerp
            out, n, double_bits(noise_std),
            seed & _MASK32, seed >> 32, base, 0,
            BLOCK=INTERP_BLOCK, CDT=cdt, LERP=lerp, NOISE=noise_std != 0.0, **launch_opts(INTERP_WARPS),
        )
