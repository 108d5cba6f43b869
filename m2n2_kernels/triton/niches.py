"""Niche statistics in Triton (the CUDA fallback, and testable on CPU tensors under
TRITON_INTERPRET=1). Semantics: docs/semantics.md, "Niche statistics", reference.niche_stats.

Three kernels, every reduction in a fixed order (no atomics: bitwise reproducible):
1. column sums z: one program per (block of columns, slice of rows); tiles of
   [BR rows, BD columns]; int32 counts for 0/1 scores (exact), fp64 otherwise. The
   child row is added by the first row slice. Row slices, when there are several,
   write fp64 partials that torch sums over the slice axis.
   Then one host sync (raise_if_bad_scores), and the weights
   u_j = c_j / ((z_j if z_j != 0 else 1) ** alpha + eps) in fp64 in torch on the
   D-vector, rounded to the compute dtype (fp32, fp64 for fp64 S).
2. fitness and (mode "row") the attraction row in one read of S: one program per
   (block of BR rows, slice of columns); fp32 tiles [BR, BJ] (fp64 for fp64 S)
   summed over FOLD column chunks, reduced over the tile and added to an fp64
   accumulator; column slices write fp64 partials that torch sums.
3. the attraction matrix: one program per (BA x BB tile of (a, b) pairs, slice of
   columns).
   - general scores: the [BA, BB, BJ] broadcast of u_j * max(x_bj - x_aj, 0), summed
     over j, fp32 (fp64 for fp64 S) over FOLD chunks, then added in fp64;
   - 0/1 scores (GPU): max(s_b - s_a, 0) = (1 - s_a) s_b, so the tile is a matrix
     product ((1 - S_a) diag(u)) S_b^T on tensor cores. u (fp32) is split exactly
     into three bf16 pieces u = u1 + u2 + u3 (8 + 8 + 8 significand bits), so every
     operand ((1 - s_a) u_k, and s_b) is exact in bf16 and every product exact; the
     products are accumulated in fp32 per chunk of BJ columns (3 * BJ terms) and
     the chunks in fp64.
Indices are int64 (row strides past 2**31 elements).
"""
import torch
import triton
import triton.language as tl

from .._values import raise_if_bad_scores
from ._utils import MAX_GRID_Y, i64, interpreting, on_device

# Grid sizing: programs wanted per SM before the columns are split across programs
# (GPU). None: derived from the device. Tests set it to exercise the split paths.
PROGRAMS_PER_SM = 4
_TARGET_PROGRAMS = None


# ---------------------------------------------------------------------------
# Device helpers.
# ---------------------------------------------------------------------------


@triton.jit
def _score(x, BINARY: tl.constexpr, CDT: tl.constexpr):
    """Scores as numbers: 0/1 for the binary storage (any nonzero byte is 1, as
    m2n2/niches.h), widened floats otherwise."""
    if BINARY:
        return (x != 0).to(CDT)
    else:
        return x.to(CDT)


# ---------------------------------------------------------------------------
# Kernel 1: column sums z (plus the child).
# ---------------------------------------------------------------------------


@triton.jit
def _column_sums_kernel(
    s_ptr, child_ptr, out_ptr, rows, cols, row_stride, rows_per_split, out_split_stride,
    HAS_CHILD: tl.constexpr, BINARY: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
):
    rows = i64(rows)
    cols = i64(cols)
    row_stride = i64(row_stride)
    split = tl.program_id(1).to(tl.int64)
    c = tl.program_id(0).to(tl.int64) * BD + tl.arange(0, BD).to(tl.int64)
    cmask = c < cols
    r_lo = split * i64(rows_per_split)
    r_hi = tl.minimum(r_lo + i64(rows_per_split), rows)
    # A negative score makes its column's sum NaN, as a NaN score does: the host's one
    # check of z finds both (scores must be finite and >= 0; 0/1 bytes always are).
    if BINARY:
        acc = tl.zeros([BR, BD], dtype=tl.int32)
    else:
        acc = tl.zeros([BR, BD], dtype=tl.float64)
        low = tl.zeros([BR, BD], dtype=tl.float64)
    for r0 in range(r_lo, r_hi, BR):
        r = r0 + tl.arange(0, BR).to(tl.int64)
        m = (r < r_hi)[:, None] & cmask[None, :]
        x = tl.load(s_ptr + r[:, None] * row_stride + c[None, :], mask=m, other=0)
        if BINARY:
            acc += (x != 0).to(tl.int32)
        else:
            acc += x.to(tl.float64)
            low = tl.where(x < 0, x.to(tl.float64), low)
    z = tl.sum(acc, axis=0).to(tl.float64)
    if HAS_CHILD:  # counted once, by the first row slice
        xc = _score(tl.load(child_ptr + c, mask=cmask & (split == 0), other=0), BINARY, tl.float64)
        z += xc
        if not BINARY:
            z = tl.where(xc < 0, float("nan"), z)
    if not BINARY:
        z = tl.where(tl.min(low, axis=0) < 0, float("nan"), z)
    tl.store(out_ptr + split * i64(out_split_stride) + c, z.to(out_ptr.dtype.element_ty), mask=cmask)


# ---------------------------------------------------------------------------
# Kernel 2: fitness (and the attraction row) of a block of rows over a column slice.
# ---------------------------------------------------------------------------


@triton.jit
def _row_sums_kernel(
    s_ptr, u_ptr, par_ptr, fit_ptr, att_ptr, rows, cols, row_stride, slice_cols, out_split_stride,
    ROW_ATT: tl.constexpr, BINARY: tl.constexpr, CDT: tl.constexpr,
    BR: tl.constexpr, BJ: tl.constexpr, FOLD: tl.constexpr,
):
    rows = i64(rows)
    cols = i64(cols)
    row_stride = i64(row_stride)
    split = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    rmask = r < rows
    j_lo = split * i64(slice_cols)
    j_hi = tl.minimum(j_lo + i64(slice_cols), cols)
    fit = tl.zeros([BR], dtype=tl.float64)
    att = tl.zeros([BR], dtype=tl.float64)
    row_base = s_ptr + r[:, None] * row_stride
    for j0 in range(j_lo, j_hi, BJ * FOLD):
        acc_f = tl.zeros([BR, BJ], dtype=CDT)
        acc_a = tl.zeros([BR, BJ], dtype=CDT)
        for jj in range(j0, tl.minimum(j0 + BJ * FOLD, j_hi), BJ):
            c = jj + tl.arange(0, BJ).to(tl.int64)
            cmask = c < j_hi
            x = _score(tl.load(row_base + c[None, :], mask=rmask[:, None] & cmask[None, :], other=0), BINARY, CDT)
            u = tl.load(u_ptr + c, mask=cmask, other=0.0)[None, :]
            acc_f += x * u
            if ROW_ATT:
                p = _score(tl.load(par_ptr + c, mask=cmask, other=0), BINARY, CDT)[None, :]
                acc_a += tl.maximum(x - p, 0.0) * u
        fit += tl.sum(acc_f, axis=1).to(tl.float64)
        if ROW_ATT:
            att += tl.sum(acc_a, axis=1).to(tl.float64)
    out = split * i64(out_split_stride) + r
    tl.store(fit_ptr + out, fit.to(fit_ptr.dtype.element_ty), mask=rmask)
    if ROW_ATT:
        tl.store(att_ptr + out, att.to(att_ptr.dtype.element_ty), mask=rmask)


# ---------------------------------------------------------------------------
# Kernel 3: the attraction matrix, one tile of (a, b) pairs over a column slice.
# ---------------------------------------------------------------------------


@triton.jit
def _matrix_kernel(
    s_ptr, u_ptr, out_ptr, rows, cols, row_stride, slice_cols, out_split_stride, b_blocks,
    BINARY: tl.constexpr, CDT: tl.constexpr, BA: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr,
    FOLD: tl.constexpr,
):
    rows = i64(rows)
    cols = i64(cols)
    row_stride = i64(row_stride)
    tile = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    a = (tile // i64(b_blocks)) * BA + tl.arange(0, BA).to(tl.int64)
    b = (tile % i64(b_blocks)) * BB + tl.arange(0, BB).to(tl.int64)
    amask = a < rows
    bmask = b < rows
    j_lo = split * i64(slice_cols)
    j_hi = tl.minimum(j_lo + i64(slice_cols), cols)
    total = tl.zeros([BA, BB], dtype=tl.float64)
    for j0 in range(j_lo, j_hi, BJ * FOLD):
        acc = tl.zeros([BA, BB], dtype=CDT)
        for jj in range(j0, tl.minimum(j0 + BJ * FOLD, j_hi), BJ):
            c = jj + tl.arange(0, BJ).to(tl.int64)
            cmask = c < j_hi
            xa = tl.load(s_ptr + a[:, None] * row_stride + c[None, :], mask=amask[:, None] & cmask[None, :], other=0)
            xb = tl.load(s_ptr + b[:, None] * row_stride + c[None, :], mask=bmask[:, None] & cmask[None, :], other=0)
            xa = _score(xa, BINARY, CDT)
            xb = _score(xb, BINARY, CDT)
            u = tl.load(u_ptr + c, mask=cmask, other=0.0)
            gain = tl.maximum(xb[None, :, :] - xa[:, None, :], 0.0) * u[None, None, :]
            acc += tl.sum(gain, axis=2)
        total += acc.to(tl.float64)
    out = out_ptr + split * i64(out_split_stride) + a[:, None] * rows + b[None, :]
    tl.store(out, total.to(out_ptr.dtype.element_ty), mask=amask[:, None] & bmask[None, :])


@triton.jit
def _matrix_binary_dot_kernel(
    s_ptr, pieces_ptr, out_ptr, rows, cols, row_stride, slice_cols, out_split_stride, b_blocks,
    BA: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, OPT: tl.constexpr, F32_OPERANDS: tl.constexpr,
):
    """0/1 scores: A_tile = sum_k ((1 - S_a) diag(u_k)) S_b^T over the three bf16
    pieces u_k of u (pieces_ptr [3, cols], smallest first), each product exact.
    OPT, the operand type: bf16 (tensor cores); fp32 under the interpreter, which
    holds bf16 as raw bits (its dot would multiply the bits): the same exact values."""
    rows = i64(rows)
    cols = i64(cols)
    row_stride = i64(row_stride)
    tile = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    a = (tile // i64(b_blocks)) * BA + tl.arange(0, BA).to(tl.int64)
    b = (tile % i64(b_blocks)) * BB + tl.arange(0, BB).to(tl.int64)
    amask = a < rows
    bmask = b < rows
    j_lo = split * i64(slice_cols)
    j_hi = tl.minimum(j_lo + i64(slice_cols), cols)
    total = tl.zeros([BA, BB], dtype=tl.float64)
    for j0 in range(j_lo, j_hi, BJ):
        c = j0 + tl.arange(0, BJ).to(tl.int64)
        cmask = c < j_hi
        xa = tl.load(s_ptr + a[:, None] * row_stride + c[None, :], mask=amask[:, None] & cmask[None, :], other=0)
        xb = tl.load(s_ptr + b[:, None] * row_stride + c[None, :], mask=bmask[:, None] & cmask[None, :], other=0)
        fails = xa == 0
        bt = tl.trans((xb != 0).to(tl.float32).to(OPT))  # 0/1, exact
        acc = tl.zeros([BA, BB], dtype=tl.float32)
        for k in tl.static_range(3):
            uk = tl.load(pieces_ptr + k * cols + c, mask=cmask, other=0.0).to(OPT)
            ak = tl.where(fails, uk[None, :], tl.zeros_like(uk)[None, :])
            if F32_OPERANDS:
                acc = tl.dot(ak, bt, acc, input_precision="ieee")
            else:
                acc = tl.dot(ak, bt, acc)
        total += acc.to(tl.float64)
    out = out_ptr + split * i64(out_split_stride) + a[:, None] * rows + b[None, :]
    tl.store(out, total.to(out_ptr.dtype.element_ty), mask=amask[:, None] & bmask[None, :])


# ---------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------


def _target_programs(device):
    if _TARGET_PROGRAMS is not None:
        return _TARGET_PROGRAMS
    if interpreting(device):
        return 1  # programs run one after another: as few as possible
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def _split(programs, length, chunk, target):
    """(splits, per_split): cut `length` into pieces of whole chunks so that
    programs * splits reaches `target` (at most 65535 pieces)."""
    want = 1 if programs >= target else min(triton.cdiv(target, max(programs, 1)), triton.cdiv(length, chunk))
    want = max(1, min(want, MAX_GRID_Y))
    per = triton.cdiv(triton.cdiv(length, want), chunk) * chunk
    return triton.cdiv(length, per), per


def _cfg(device, double):
    """Block sizes: large tiles for the interpreter (few, cheap numpy steps), register-
    sized ones on the GPU."""
    if interpreting(device):
        return dict(
            k1=dict(BR=16, BD=512), k2=dict(BR=64, BJ=128, FOLD=2), k3=dict(BA=32, BB=32, BJ=32, FOLD=4),
            k3dot=dict(BA=32, BB=32, BJ=64), w1=1, w2=1, w3=1, w3dot=1,
        )
    return dict(
        k1=dict(BR=8, BD=256 if double else 512),
        k2=dict(BR=16 if double else 32, BJ=128, FOLD=16),
        k3=dict(BA=32, BB=32, BJ=4 if double else 8, FOLD=16),
        k3dot=dict(BA=64, BB=64, BJ=64),
        w1=4, w2=8, w3=8, w3dot=4,
    )


def _bf16_pieces(u):
    """u (fp32) = u1 + u2 + u3 exactly, each piece bf16 (8 significand bits each;
    torch rounds to nearest, so every remainder fits in the next piece). Returned
    [3, D], smallest piece first. A non-finite u stays whole in u1."""
    u1 = u.to(torch.bfloat16)
    finite = torch.isfinite(u)
    r1 = torch.where(finite, u - u1.float(), 0.0)
    u2 = r1.to(torch.bfloat16)
    u3 = (r1 - u2.float()).to(torch.bfloat16)
    return torch.stack([u3, u2, u1]).contiguous()


def niche_stats_out(S, child, capacity, alpha, eps, parent, attraction_mode, z, fitness, attraction):
    """torch.ops.m2n2.niche_stats_out in Triton: z [D], fitness [N (+1 with a child)]
    and attraction ([0], [N] or [N, N]) written in place. Arguments in the op's
    canonical form, already checked (m2n2_kernels/niches.py); a non-finite score
    raises ValueError naming it before fitness or attraction is written."""
    rows, cols = S.shape
    row_stride = cols if rows <= 1 else S.stride(0)
    with on_device(S.device):
        _niche_stats(
            S, child, capacity, float(alpha), float(eps), parent, attraction_mode, z, fitness, attraction,
            rows, cols, row_stride,
        )


def _niche_stats(S, child, capacity, alpha, eps, parent, mode, z, fitness, attraction, rows, cols, row_stride):
    if cols == 0:
        fitness.zero_()
        attraction.zero_()
        return
    device = S.device
    binary = S.dtype in (torch.bool, torch.uint8)
    double = S.dtype == torch.float64
    cdt = torch.float64 if double else torch.float32
    tcdt = tl.float64 if double else tl.float32
    # Triton reads torch.bool as bytes only through a uint8 view (same strides).
    Sv = S.view(torch.uint8) if S.dtype == torch.bool else S
    childv = child.view(torch.uint8) if child is not None and child.dtype == torch.bool else child
    cfg = _cfg(device, double)
    target = _target_programs(device)

    # 1. z, then the one host sync, then u.
    k1 = cfg["k1"]
    col_blocks = triton.cdiv(cols, k1["BD"])
    splits, per = _split(col_blocks, max(rows, 1), k1["BR"], target)
    zout = z if splits == 1 else torch.empty((splits, cols), dtype=torch.float64, device=device)
    _column_sums_kernel[(col_blocks, splits)](
        Sv, childv if child is not None else Sv, zout, rows, cols, row_stride, per, cols,
        HAS_CHILD=child is not None, BINARY=binary, **k1, num_warps=cfg["w1"],
    )
    if splits > 1:
        z.copy_(zout.sum(0))
    raise_if_bad_scores(S, child, z)
    zz = z.to(torch.float64)
    zhat = torch.where(zz != 0, zz, 1.0).pow(alpha) + eps
    u = ((capacity if capacity is not None else 1.0) / zhat).to(cdt)

    # 2. fitness (rows of S, then the child) and the attraction row.
    k2 = cfg["k2"]
    fit_rows = fitness.shape[0]
    row_att = mode == "row"
    row_blocks = triton.cdiv(rows, k2["BR"]) + (child is not None)
    splits, per = _split(row_blocks, cols, k2["BJ"] * k2["FOLD"], target)
    if splits == 1:
        fit_out, att_out = fitness, attraction
    else:
        fit_out = torch.empty((splits, fit_rows), dtype=torch.float64, device=device)
        att_out = torch.empty((splits, rows), dtype=torch.float64, device=device) if row_att else fit_out
    launches = []
    if rows > 0:
        launches.append((Sv, rows, row_stride, fit_out, row_att))
    if child is not None:  # row N of fitness (a child comes only with mode "none")
        launches.append((childv, 1, cols, fit_out.view(-1)[rows:], False))
    for src, n, stride, fit_ptr, with_att in launches:
        _row_sums_kernel[(triton.cdiv(n, k2["BR"]), splits)](
            src, u, Sv[parent] if with_att else u, fit_ptr, att_out if with_att else fit_ptr, n, cols, stride,
            per, fit_rows, ROW_ATT=with_att, BINARY=binary, CDT=tcdt, **k2, num_warps=cfg["w2"],
        )
    if splits > 1:
        fitness.copy_(fit_out.sum(0))
        if row_att:
            attraction.copy_(att_out.sum(0))

    # 3. the attraction matrix.
    if mode == "matrix" and rows > 0:
        dot = binary and (not interpreting(device) or _USE_DOT_IN_INTERPRETER)
        k3 = cfg["k3dot"] if dot else cfg["k3"]
        a_blocks = triton.cdiv(rows, k3["BA"])
        b_blocks = triton.cdiv(rows, k3["BB"])
        tiles = a_blocks * b_blocks
        splits, per = _split(tiles, cols, k3["BJ"] * k3.get("FOLD", 4), target)
        out = attraction if splits == 1 else torch.empty((splits, rows, rows), dtype=torch.float64, device=device)
        if dot:
            _matrix_binary_dot_kernel[(tiles, splits)](
                Sv, _bf16_pieces(u), out, rows, cols, row_stride, per, rows * rows, b_blocks,
                OPT=tl.float32 if interpreting(device) else tl.bfloat16,
                F32_OPERANDS=interpreting(device), **k3, num_warps=cfg["w3dot"],
            )
        else:
            _matrix_kernel[(tiles, splits)](
                Sv, u, out, rows, cols, row_stride, per, rows * rows, b_blocks,
                BINARY=binary, CDT=tcdt, **k3, num_warps=cfg["w3"],
            )
        if splits > 1:
            attraction.copy_(out.sum(0))


# The tensor-core path for 0/1 scores runs on the GPU; under the interpreter it runs
# too (same pieces, masks and fp64 folding; the products in fp32, which the bf16
# pieces make identical), unless a test switches it off to check the broadcast path.
_USE_DOT_IN_INTERPRETER = True
