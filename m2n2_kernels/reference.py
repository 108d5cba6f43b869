"""Pure-torch reference implementations: THE semantics of every op.

Tests compare every backend with these functions, and the benchmarks use them as
the "good torch" baseline where noted. They are written for clarity first, but
stream over large inputs in chunks so that they also run at scale.
"""
import math

import torch

# ---------------------------------------------------------------------------
# Counter-based Gaussian noise (csrc/include/m2n2/philox.h holds the same).
# ---------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(m: int, x: torch.Tensor):
    """High and low 32 bits of m * x for x in [0, 2^32), exactly, in int64 (no
    reliance on signed overflow: x is split into 16-bit halves)."""
    x_lo = x & 0xFFFF
    x_hi = x >> 16
    lo_part = m * x_lo  # < 2^48
    hi_part = m * x_hi  # < 2^48
    mid = lo_part + ((hi_part & 0xFFFF) << 16)  # < 2^49
    lo = mid & _MASK32
    hi = (hi_part >> 16) + (mid >> 32)
    return hi & _MASK32, lo


def philox4x32_10(c, key):
    """Philox4x32 with 10 rounds on int64 tensors holding uint32 words."""
    c0, c1, c2, c3 = c
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W[0]) & _MASK32
        k1 = (k1 + _PHILOX_W[1]) & _MASK32
    return c0, c1, c2, c3


def philox_words(seed: int, stream: int, group: torch.Tensor):
    """The four Philox4x32-10 words of counters (group, group >> 32, stream, stream >>
    32) for an int64 tensor of counter indices, key (seed, seed >> 32) (64-bit seed and
    stream, taken modulo 2^64)."""
    seed &= 2**64 - 1
    stream &= 2**64 - 1
    zeros = torch.zeros_like(group)
    c = (group & _MASK32, (group >> 32) & _MASK32, zeros + (stream & _MASK32), zeros + (stream >> 32))
    return philox4x32_10(c, (seed & _MASK32, seed >> 32))


def normal_noise(seed: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """Standard normal z(seed, stream, i) for int64 element indices, as float32.

    Philox4x32-10 on counter (g, g >> 32, stream, stream >> 32), g = i // 4, key
    (seed, seed >> 32); Box-Muller turns words (0, 1) into lanes (0, 1) = (r cos,
    r sin) and words (2, 3) into lanes (2, 3); element i takes lane i % 4.
    """
    lane = index & 3
    words = philox_words(seed, stream, index >> 2)
    first = torch.where(lane < 2, words[0], words[2])
    second = torch.where(lane < 2, words[1], words[3])
    u1 = ((first >> 8) + 1).to(torch.float32) * 2.0**-24  # (0, 1]
    u2 = (second >> 8).to(torch.float32) * 2.0**-24  # [0, 1)
    r = torch.sqrt(-2.0 * torch.log(u1))
    angle = u2 * (2 * math.pi)
    return torch.where(lane % 2 == 0, r * torch.cos(angle), r * torch.sin(angle))


# ---------------------------------------------------------------------------
# Split-point crossover.
# ---------------------------------------------------------------------------

SLERP_MIN_SIN = 1e-6
_SUM_CHUNK = 1 << 22


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def split_sums(a: torch.Tensor, b: torch.Tensor, split: int):
    """(dot, |a|^2, |b|^2) of each side of the split, accumulated in fp64, chunked."""
    a, b = a.reshape(-1), b.reshape(-1)
    sums = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    for start in range(0, a.numel(), _SUM_CHUNK):
        stop = min(a.numel(), start + _SUM_CHUNK)
        for side, (lo, hi) in enumerate(((start, min(stop, split)), (max(start, split), stop))):
            if hi <= lo:
                continue
            x, y = a[lo:hi].double(), b[lo:hi].double()
            sums[side][0] += float(torch.dot(x, y))
            sums[side][1] += float(torch.dot(x, x))
            sums[side][2] += float(torch.dot(y, y))
    return sums


def slerp_coefs(dot: float, aa: float, bb: float, t: float):
    """(ca, cb) with child = ca a + cb b; lerp where sin(omega) <= 1e-6 or a norm is 0."""
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na > 0 and nb > 0:
        omega = math.acos(min(1.0, max(-1.0, dot / (na * nb))))
        so = math.sin(omega)
        if so > SLERP_MIN_SIN:
            return math.sin((1 - t) * omega) / so, math.sin(t * omega) / so
    return 1 - t, t


def split_coefs(method: str, omega: str, sums, w: float):
    """[(ca, cb) of side 0 (i < split, t = w), (ca, cb) of side 1 (t = 1 - w)]."""
    ts = (w, 1 - w)
    if method == "lerp":
        return [(1 - t, t) for t in ts]
    if omega == "global":
        total = [sums[0][k] + sums[1][k] for k in range(3)]
        return [slerp_coefs(*total, t) for t in ts]
    return [slerp_coefs(*sums[side], ts[side]) for side in range(2)]


def _flat_pair(a_list, b_list):
    """a and b as one flat vector each (fp64 when the list mixes dtypes)."""
    mixed = len({t.dtype for t in a_list}) > 1
    return [torch.cat([t.reshape(-1).double() if mixed else t.reshape(-1) for t in ts]) for ts in (a_list, b_list)]


def _entry_firsts(a_list, index_offset, index_offsets):
    """The global index of element 0 of each entry: index_offsets[i] when given (pieces
    in any order, not adjacent), else the entries follow each other from index_offset."""
    if index_offsets is not None:
        return [int(o) for o in index_offsets]
    firsts, first = [], index_offset
    for t in a_list:
        firsts.append(first)
        first += t.numel()
    return firsts


def _side_sums(a_list, b_list, split, firsts):
    """split_sums over the entries by global side: the side-0 parts of every entry (in
    list order) then the side-1 parts, as one vector (for adjacent entries, the list
    as it is), and its local split."""
    cuts = [min(max(split - f, 0), t.numel()) for t, f in zip(a_list, firsts)]
    parts = [[t.reshape(-1)[:c] for t, c in zip(ts, cuts)] + [t.reshape(-1)[c:] for t, c in zip(ts, cuts)]
             for ts in (a_list, b_list)]
    flat = _flat_pair(*parts)
    return split_sums(flat[0], flat[1], sum(cuts))


def interp_sums(a, b, split: int, *, index_offset: int = 0, index_offsets=None):
    """The six sums of the slerp angle over the piece given (tensors, or lists forming
    one vector whose element 0 has global index index_offset; or entries whose element
    0 has global index index_offsets[i]): float64 [2, 3], row s = (dot, |a|^2, |b|^2)
    over the elements on side s of the global split (side 0: global index < split).
    The sums of pieces add up to the whole vector's."""
    a_list = list(a) if isinstance(a, (list, tuple)) else [a]
    b_list = list(b) if isinstance(b, (list, tuple)) else [b]
    sums = _side_sums(a_list, b_list, split, _entry_firsts(a_list, index_offset, index_offsets))
    return torch.tensor(sums, dtype=torch.float64, device=a_list[0].device)


def split_interpolate(
    a,
    b,
    split: int,
    w: float,
    *,
    method: str = "slerp",
    omega: str = "global",
    noise_std: float = 0.0,
    seed: int = 0,
    stream: int = 0,
    index_offset: int = 0,
    sums=None,
    index_offsets=None,
):
    """Child of parents a and b (tensors, or lists of tensors forming one vector).

    t_i = w where g_i < split, else 1 - w, g_i the global index of element i
    (index_offset + i; for entry j of a list given index_offsets, index_offsets[j] +
    its position in the entry); lerp or slerp (angle over the whole vectors for
    omega="global", per side for "segment"); element maths in fp32 (fp64 for fp64),
    then + noise_std * z(seed, stream, g_i).
    Returns a new tensor (or list of tensors) in the dtype of a (each piece of a
    list in its own dtype and compute type: a list may mix dtypes). `sums` (float64
    [2, 3], as interp_sums) replaces the slerp angle's sums over the tensors given: the
    totals of a longer vector streamed or sharded in pieces.
    """
    is_list = isinstance(a, (list, tuple))
    a_list = list(a) if is_list else [a]
    b_list = list(b) if is_list else [b]
    firsts = _entry_firsts(a_list, index_offset, index_offsets)
    if method == "slerp" and sums is not None:
        sums = sums.double().reshape(2, 3).tolist()
    elif method == "slerp":  # the angle over the whole vector, whatever the pieces' dtypes
        sums = _side_sums(a_list, b_list, split, firsts)
    (ca0, cb0), (ca1, cb1) = split_coefs(method, omega, sums, w)
    pieces = []
    for ta, tb, first in zip(a_list, b_list, firsts):
        # Each piece in the compute type of its own dtype (a list may mix dtypes).
        cdt = _compute_dtype(ta.dtype)
        x, y = ta.reshape(-1).to(cdt), tb.reshape(-1).to(cdt)
        cut = min(max(split - first, 0), x.numel())
        child = torch.empty_like(x)
        # Python floats become scalars of the tensor's dtype: fl(ca * a) + fl(cb * b).
        child[:cut] = x[:cut] * ca0 + y[:cut] * cb0
        child[cut:] = x[cut:] * ca1 + y[cut:] * cb1
        if noise_std != 0.0 and x.numel() > 0:
            index = torch.arange(x.numel(), dtype=torch.int64, device=x.device) + first
            child = child + normal_noise(seed, stream, index).to(cdt) * noise_std
        pieces.append(child.to(ta.dtype).view_as(ta))
    return pieces if is_list else pieces[0]


def crossover_batch(archive, ia, ib, split, w, *, method="slerp", omega="global", noise_std=0.0, seed=0):
    """K children from rows ia[k], ib[k] of archive; child k's noise uses stream k."""
    children = [
        split_interpolate(
            archive[int(ia[k])],
            archive[int(ib[k])],
            int(split[k]),
            float(w[k]),
            method=method,
            omega=omega,
            noise_std=noise_std,
            seed=seed,
            stream=k,
        )
        for k in range(len(ia))
    ]
    if not children:
        return archive.new_empty((0, archive.shape[1]))
    return torch.stack(children)


# ---------------------------------------------------------------------------
# Per-sample score gathering.
# ---------------------------------------------------------------------------

SCORE_KINDS = ("correct", "logprob", "prob")
SCORE_REDUCES = ("mean", "sum", "all")


def token_valid(target, mask=None, ignore_index=-100):
    """The tokens that count: target != ignore_index and mask true (nonzero)."""
    valid = target != ignore_index
    return valid if mask is None else valid & (mask != 0)


def sample_scores(logits, target, *, kind="correct", mask=None, ignore_index=-100, reduce="mean"):
    """One float32 score per sample from logits [B, V] or [B, T, V] and targets [B] or [B, T].

    Per token: kind "correct" is argmax(-1) == target (torch.argmax: ties to the lowest
    index, a NaN is the maximum and the first NaN wins); "logprob" is
    log_softmax(logits.float(), -1) at the target; "prob" its exp. A row that holds a NaN
    or +inf, or only -inf, has no distribution: its logprob and prob are NaN. Over the
    valid tokens of a sample (mask true and target != ignore_index), in fp64: "mean",
    "sum", or "all" (kind "correct" only: 1 when every valid token is correct). A
    sample with no valid token scores 0, for every kind and reduction.

    This is the plain torch way (an fp32 log_softmax of all the logits), which the
    benchmarks use as the torch baseline.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    if reduce not in SCORE_REDUCES:
        raise ValueError(f"reduce must be one of {SCORE_REDUCES}, got {reduce!r}")
    if reduce == "all" and kind != "correct":
        raise ValueError("reduce='all' (exact match) needs kind='correct'")
    if logits.dim() == 2:
        logits, target = logits.unsqueeze(1), target.unsqueeze(1)
        mask = None if mask is None else mask.unsqueeze(1)
    valid = token_valid(target, mask, ignore_index)
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if kind == "correct":
        per_token = (logits.argmax(-1) == safe).double()
    else:
        logprob = torch.log_softmax(logits.float(), -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        per_token = (logprob if kind == "logprob" else logprob.exp()).double()
    per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
    count = valid.sum(-1)
    total = per_token.sum(-1)
    if reduce == "sum":
        score = total
    elif reduce == "mean":
        score = total / count.clamp(min=1)
    else:
        score = ((total == count) & (count > 0)).double()
    return score.float()


# ---------------------------------------------------------------------------
# Niche statistics: competition fitness, attraction, replacement.
# ---------------------------------------------------------------------------

# Elements of S (or of the N x N x chunk broadcast) handled per chunk: the reference
# streams over the columns so that it runs at the scale the kernels are benchmarked at.
_NICHE_CHUNK = 1 << 22


def niche_compute_dtype(dtype):
    """float32 for every score storage but float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _column_chunks(cols, per_column):
    step = max(1, _NICHE_CHUNK // max(1, per_column))
    return [(lo, min(cols, lo + step)) for lo in range(0, cols, step)]


def column_sums(S, child=None):
    """z_j = sum_k S_kj (plus the child's score when a child row is given)."""
    cdt = niche_compute_dtype(S.dtype)
    z = torch.zeros(S.shape[1], dtype=cdt, device=S.device)
    for lo, hi in _column_chunks(S.shape[1], S.shape[0]):
        z[lo:hi] = S[:, lo:hi].to(cdt).sum(0)
    if child is not None:
        z += child.to(cdt)
    return z


def niche_weights(z, capacity=None, alpha=1.0, eps=0.0):
    """u_j = c_j / zhat_j, zhat_j = (z_j if z_j != 0 else 1) ** alpha + eps."""
    zhat = torch.where(z != 0, z, torch.ones_like(z)).pow(alpha) + eps
    c = 1.0 if capacity is None else capacity.to(z.dtype)
    return c / zhat


def weighted_row_sums(S, u, child=None):
    """fitness_i = sum_j u_j S_ij (the child's as row N when given)."""
    cdt = u.dtype
    fit = torch.zeros(S.shape[0], dtype=cdt, device=S.device)
    for lo, hi in _column_chunks(S.shape[1], S.shape[0]):
        fit += S[:, lo:hi].to(cdt) @ u[lo:hi]
    if child is not None:
        fit = torch.cat([fit, (child.to(cdt) @ u).reshape(1)])
    return fit


def attraction_row(S, u, parent):
    """A[parent, b] = sum_j u_j max(S_bj - S_parent,j, 0) for every row b."""
    cdt = u.dtype
    row = torch.zeros(S.shape[0], dtype=cdt, device=S.device)
    for lo, hi in _column_chunks(S.shape[1], S.shape[0]):
        x = S[:, lo:hi].to(cdt)
        row += (x - x[parent]).clamp_(min=0) @ u[lo:hi]
    return row


def attraction_matrix(S, u):
    """A[a, b] = sum_j u_j max(S_bj - S_aj, 0): the N x N x chunk broadcast, chunked over
    the columns (the plain torch way; never all of N x N x D at once)."""
    cdt = u.dtype
    n = S.shape[0]
    A = torch.zeros(n, n, dtype=cdt, device=S.device)
    for lo, hi in _column_chunks(S.shape[1], n * n):
        x = S[:, lo:hi].to(cdt)
        A += (x.unsqueeze(0) - x.unsqueeze(1)).clamp_(min=0) @ u[lo:hi]
    return A


def niche_stats(S, *, alpha=1.0, capacity=None, eps=0.0, parent=None, mode=None, child=None):
    """(z, fitness, attraction) of the score matrix S [N, D].

    mode "none": no attraction (None); "row": the row A[parent, :]; "matrix": all of
    A. By default "row" when a parent is given, else "matrix". A child row is
    counted in z and fitness as row N (mode "none" only). Computed in float32
    (float64 for float64 S).
    """
    if mode is None:
        mode = "matrix" if parent is None else "row"
    z = column_sums(S, child)
    u = niche_weights(z, capacity, alpha, eps)
    fit = weighted_row_sums(S, u, child)
    if mode == "none":
        return z, fit, None
    if mode == "row":
        return z, fit, attraction_row(S, u, parent)
    return z, fit, attraction_matrix(S, u)


def fitness(S, *, alpha=1.0, capacity=None, eps=0.0):
    return niche_stats(S, alpha=alpha, capacity=capacity, eps=eps, mode="none")[1]


def attraction(S, *, alpha=1.0, capacity=None, eps=0.0, parent=None):
    return niche_stats(S, alpha=alpha, capacity=capacity, eps=eps, parent=parent)[2]


def replacement_from_fitness(fit):
    """The row a child replaces given fitness over N + 1 rows (child last): the lowest
    fitness, ties to the lowest index; -1 when that is the child itself."""
    worst = int(torch.argmin(fit))  # the first minimal value (torch.argmin's rule)
    return -1 if worst == fit.numel() - 1 else worst


def replace_index(S, child, *, alpha=1.0, capacity=None, eps=0.0):
    fit = niche_stats(S, alpha=alpha, capacity=capacity, eps=eps, mode="none", child=child)[1]
    return replacement_from_fitness(fit)


# ---------------------------------------------------------------------------
# Task-vector merges (docs/semantics.md, "Task-vector merges").
# ---------------------------------------------------------------------------

DARE_STREAM = 0xDA4E000000000000  # Philox stream of model k's DARE draws: DARE_STREAM + k
RESCALE_MIN = 1e-7  # l1 rescale: 1 where either sum is below this (mergekit's eps)
DIVISOR_MIN = 1e-8  # without consensus: |sum of weights| below this divides by 1
DARE_LOW_FLIP = 1 << 48  # stream ^ this: the stream of the draws' low bytes


def dare_uniform24(seed: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """u(seed, stream, i) in [0, 1): u24 times 2^-24 as float64 (exact), u24 = hi16 2^8
    + lo8 with hi16 half i % 2 (low half first) of Philox word (i >> 1) % 4 of counter
    (i >> 3, stream) and lo8 byte i % 4 (low byte first) of word (i >> 2) % 4 of
    counter (i >> 4, stream ^ DARE_LOW_FLIP). (The CPU and CUDA kernels draw lo8 only
    where hi16 ties with the threshold's high half: the comparison with rho is the
    same.)"""
    stream &= 2**64 - 1
    index = index.to(torch.int64).reshape(-1)
    hi_words = torch.stack(philox_words(seed, stream, index >> 3))
    hi = hi_words.gather(0, ((index >> 1) & 3).reshape(1, -1)).reshape(-1) >> (16 * (index & 1))
    lo_words = torch.stack(philox_words(seed, stream ^ DARE_LOW_FLIP, index >> 4))
    lo = lo_words.gather(0, ((index >> 2) & 3).reshape(1, -1)).reshape(-1) >> (8 * (index & 3))
    u24 = ((hi & 0xFFFF) << 8) | (lo & 0xFF)
    return u24.to(torch.float64) * 2.0**-24


def _per_model(x, k):
    return [float(v) for v in (list(x) if isinstance(x, (list, tuple)) else [x] * k)]


def _keep_count(rho, n):
    if n == 0 or rho <= 0:
        return 0
    if rho >= 1:
        return n
    return max(1, int(rho * n))


def _magnitude_mask(d, rho):
    """Exactly keep-count elements of largest |d|, ties at the threshold lowest index first."""
    k = _keep_count(rho, d.numel())
    mask = torch.zeros(d.numel(), dtype=torch.bool, device=d.device)
    if k:
        order = torch.sort(d.abs(), descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask


def outlier_band(rho, gamma, n):
    """The descending magnitude ranks [start, end) magnitude_outliers keeps of n:
    int(rho n) after the int(gamma n) largest, or the int(rho n) smallest where fewer
    are left (mergekit's magnitude_outliers); all for rho >= 1."""
    if rho >= 1 or n == 0:
        return 0, n
    t = int(rho * n) if rho > 0 else 0
    top = int(gamma * n) if gamma > 0 else 0
    start = min(top, n - t)
    return start, start + t


def _outlier_mask(d, rho, gamma):
    """The band of outlier_band in descending |d| order, ties lowest index first."""
    start, end = outlier_band(rho, gamma, d.numel())
    mask = torch.zeros(d.numel(), dtype=torch.bool, device=d.device)
    if end > start:
        order = torch.sort(d.abs(), descending=True, stable=True).indices
        mask[order[start:end]] = True
    return mask


def _random_mask(rho, model, seed, n, device):
    if rho >= 1:
        return torch.ones(n, dtype=torch.bool, device=device)
    return dare_uniform24(seed, DARE_STREAM + model, torch.arange(n, device=device)) < rho


def della_fibers(shape):
    """(A, B, C): della ranks along dim 1, mergekit's rows; a tensor of fewer than two
    dims is one row (A = C = 1)."""
    shape = tuple(shape)
    if len(shape) < 2:
        n = 1
        for s in shape:
            n *= s
        return 1, n, 1
    inner = 1
    for s in shape[2:]:
        inner *= s
    return shape[0], shape[1], inner


def della_probability(rho, eps, fiber, rank):
    """DELLA's keep probability at 0-based ascending magnitude ranks `rank` (int64) in a
    fiber of `fiber` elements: (rho - eps) + (rank / (fiber - 1)) (2 eps) in fp64 (rank /
    (fiber - 1) read as 0 for fiber = 1)."""
    spread = rank.to(torch.float64) / (fiber - 1) if fiber > 1 else torch.zeros_like(rank, dtype=torch.float64)
    return (rho - eps) + spread * (2.0 * eps)


def dare_threshold(p):
    """The integer threshold T of keep probabilities p (fp64): u24 < T keeps, T =
    ceil(p 2^24), 0 for p <= 0, 2^24 for p >= 1."""
    t = torch.ceil(p * 2.0**24)
    return torch.where(p >= 1, 2**24, torch.where(p <= 0, 0, t)).to(torch.int64)


def _della_mask(d, shape, rho, eps, model, seed, first):
    """Model `model`'s della keep mask of one tensor's flat delta d (unit index of its
    first element: `first`): ranks along dim 1 by |d| ascending, ties lowest index
    first; DARE's draws against each element's probability."""
    n = d.numel()
    if rho >= 1:
        return torch.ones(n, dtype=torch.bool, device=d.device)
    if rho <= 0 or n == 0:
        return torch.zeros(n, dtype=torch.bool, device=d.device)
    A, B, C = della_fibers(shape)
    order = torch.sort(d.abs().reshape(A, B, C), dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(B, device=d.device).reshape(1, B, 1).expand(A, B, C).contiguous())
    thr = dare_threshold(della_probability(rho, eps, B, ranks.reshape(-1)))
    index = first + torch.arange(n, device=d.device)
    u24 = (dare_uniform24(seed, DARE_STREAM + model, index) * 2.0**24).to(torch.int64)
    return u24 < thr


def _rescale(d, mask, rho, rescale, cdt):
    """s_k of one unit, where the rule keeps some elements but not all (the caller
    checks): 1/rho ("density") or the l1 ratio."""
    if rescale is None:
        return 1.0
    if rescale == "density":
        return torch.tensor(1.0 / rho, dtype=torch.float64).to(cdt).item()
    before = float(d.abs().double().sum())
    after = float((d.abs() * mask).double().sum())
    if before < RESCALE_MIN or after < RESCALE_MIN:
        return 1.0
    return torch.tensor(before / after, dtype=torch.float64).to(cdt).item()


def _partial(sparsify, rho, n, gamma=0.0):
    """The sparsification rule keeps some of a unit's n elements but not all."""
    if sparsify == "magnitude":
        return 0 < _keep_count(rho, n) < n
    if sparsify == "magnitude_outliers":
        start, end = outlier_band(rho, gamma, n)
        return 0 < end - start < n
    return sparsify in ("random", "della") and 0.0 < rho < 1.0


def task_merge(base, models, weights, *, sparsify=None, density=1.0, consensus=None, rescale=None, normalize=False,
               lam=1.0, scope="tensor", seed=0, gamma=0.01, epsilon=0.0):
    """The task-vector merge of `models` onto `base` (tensors, or lists of tensors):
    see docs/semantics.md. Returns a new tensor (list) in base's dtypes."""
    is_list = isinstance(base, (list, tuple))
    base_list = list(base) if is_list else [base]
    model_lists = [list(m) if is_list else [m] for m in models]
    K = len(model_lists)
    w = [float(v) for v in weights]
    rho = _per_model(density, K)
    gam = _per_model(gamma, K)
    eps = _per_model(epsilon, K)
    cdts = [_compute_dtype(t.dtype) for t in base_list]
    # Units: each position (scope "tensor") or the whole list (scope "global"), as
    # flat vectors in the list's widest compute type.
    units = [[i] for i in range(len(base_list))] if scope == "tensor" else [list(range(len(base_list)))]
    factors = [[None] * len(base_list) for _ in range(K)]  # per model, per position: flat e_k
    for unit in units:
        cdt = torch.float64 if any(cdts[i] == torch.float64 for i in unit) else torch.float32
        sizes = [base_list[i].numel() for i in unit]
        for k in range(K):
            d = torch.cat([(model_lists[k][i].reshape(-1).to(cdts[i]) - base_list[i].reshape(-1).to(cdts[i])).to(cdt)
                           for i in unit]) if unit else torch.zeros(0)
            if sparsify == "magnitude":
                mask = _magnitude_mask(d, rho[k])
            elif sparsify == "random":
                mask = _random_mask(rho[k], k, seed, d.numel(), d.device)
            elif sparsify == "magnitude_outliers":
                mask = _outlier_mask(d, rho[k], gam[k])
            elif sparsify == "della":
                firsts = [sum(sizes[:j]) for j in range(len(sizes))]
                mask = torch.cat([_della_mask(d[f:f + size], base_list[i].shape, rho[k], eps[k], k, seed, f)
                                  for i, size, f in zip(unit, sizes, firsts)]) if unit else torch.zeros(0, dtype=torch.bool)
            else:
                mask = torch.ones(d.numel(), dtype=torch.bool, device=d.device)
            partial = _partial(sparsify, rho[k], d.numel(), gam[k])
            s = _rescale(d, mask, rho[k], rescale, cdt) if partial else 1.0
            start = 0
            for i, size in zip(unit, sizes):
                dk = d[start:start + size].to(cdts[i])
                keep = mask[start:start + size]
                e = torch.where(keep, (dk * s) * w[k], torch.zeros((), dtype=cdts[i]))
                factors[k][i] = e
                start += size
    out = []
    for i, b in enumerate(base_list):
        cdt = cdts[i]
        e = torch.stack([factors[k][i] for k in range(K)]) if K else torch.zeros(0, b.numel(), dtype=cdt)
        wk = torch.tensor(w, dtype=cdt).reshape(-1, 1)
        if consensus is None:
            x = _ordered_sum(e)
            dsum = _ordered_sum(wk.expand_as(e))
            divisor = torch.where(dsum.abs() < DIVISOR_MIN, torch.ones_like(dsum), dsum)
        else:
            sign = torch.sign(e)
            vote = _ordered_sum(e) if consensus == "sum" else _ordered_sum(sign)
            sigma = torch.where(vote >= 0, 1.0, -1.0).to(cdt)
            agree = sign == sigma
            x = _ordered_sum(torch.where(agree, e, torch.zeros((), dtype=cdt)))
            dsum = _ordered_sum(torch.where(agree, wk.expand_as(e), torch.zeros((), dtype=cdt)))
            divisor = torch.where(dsum == 0, torch.ones_like(dsum), dsum)
        if normalize:
            x = x / divisor
        x = x * lam
        out.append((b.reshape(-1).to(cdt) + x).to(b.dtype).reshape(b.shape))
    return out if is_list else out[0]


def della_merge(base, models, weights, density, *, epsilon=0.15, seed=0, consensus="sum", rescale="l1",
                normalize=True, lam=1.0, scope="tensor"):
    """DELLA (mergekit's della_magprune, then its generalized task arithmetic): see
    docs/semantics.md, "della"."""
    return task_merge(base, models, weights, sparsify="della", density=density, consensus=consensus, rescale=rescale,
                      normalize=normalize, lam=lam, scope=scope, seed=seed, epsilon=epsilon)


def _ordered_sum(rows):
    """Sum over dim 0 in ascending order, rounded after each addition (not pairwise)."""
    acc = torch.zeros(rows.shape[1:], dtype=rows.dtype, device=rows.device)
    for r in rows:
        acc = acc + r
    return acc


# ---------------------------------------------------------------------------
# PCB merging (docs/semantics.md, "PCB merging").
# ---------------------------------------------------------------------------

PCB_SCALE_SUM_MIN = 1e-12  # the divisor's floor: a sum of scales below it divides by it


def order_key(x):
    """int64 keys whose order is the order of the C++ kernels' radix selection over
    x (fp32 or fp64): value order, -0 just below +0 (NaNs at the ends, by sign)."""
    if x.dtype == torch.float64:
        bits, low = x.view(torch.int64), 2**63 - 1
    else:
        bits, low = x.view(torch.int32).to(torch.int64), 2**31 - 1
    return torch.where(bits < 0, bits ^ low, bits)


def _at_ranks(x, ranks):
    """The elements of x at the given 0-based ascending ranks (in order_key order)."""
    order = torch.sort(order_key(x), stable=True).indices
    return [x[order[r]] for r in ranks]


def _clamp(x, lo, hi):
    """min(max(x, lo), hi), applied in that order (all hi where lo > hi)."""
    y = torch.where(x < lo, lo, x)
    return torch.where(y > hi, hi, y)


# pcb.h's exp and tanh (docs/semantics.md, "PCB merging"), spelled out operation for
# operation in the compute type, so that the kernels and this reference agree bit for
# bit: per compute type, the Taylor terms of e^r - 1, ln 2 split in two (its leading
# bits, its rest), the round-to-integer shift and exponent bias, and where tanh
# rounds to 1.
_PCB_MATH = {
    torch.float32: dict(terms=7, ln2=(0.693359375, -2.12194440054690582e-4), shift=12582912.0, bias=127,
                        mantissa=23, bits=torch.int32, tanh_one=10.0,
                        series=(-17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0)),
    torch.float64: dict(terms=13, ln2=(6.93147180369123816490e-01, 1.90821492927058770002e-10),
                        shift=6755399441055744.0, bias=1023, mantissa=52, bits=torch.int64, tanh_one=22.0,
                        series=(6404582.0 / 10854718875.0, -929569.0 / 638512875.0, 21844.0 / 6081075.0,
                                -1382.0 / 155925.0, 62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0)),
}
_PCB_INV_LN2 = 1.44269504088896338700e+00
_PCB_TANH_SERIES_MAX = 0.125


def _c(v, x):
    """The double v rounded once to x's dtype (as C++ rounds pcb.h's constants)."""
    return torch.tensor(v, dtype=x.dtype, device=x.device)


def _pcb_exp_split(x):
    """(e^r - 1, 2^k) with x = k ln2 + r (pcb_exp_split)."""
    f = _PCB_MATH[x.dtype]
    shift = _c(f["shift"], x)
    shifted = x * _c(_PCB_INV_LN2, x) + shift
    k = shifted - shift
    k_bits = shifted.view(f["bits"]) - shift.view(f["bits"])
    two_k = ((k_bits + f["bias"]) << f["mantissa"]).view(x.dtype)
    r = (x - k * _c(f["ln2"][0], x)) - k * _c(f["ln2"][1], x)
    p = _c(1.0 / math.factorial(f["terms"]), x)
    for j in range(f["terms"] - 1, 0, -1):
        p = p * r + _c(1.0 / math.factorial(j), x)
    return p * r, two_k


def pcb_exp(x):
    """e^x as pcb.h's pcb_exp, in x's dtype (fp32 or fp64)."""
    p, two_k = _pcb_exp_split(x)
    return (1.0 + p) * two_k


def pcb_tanh(y):
    """tanh(y) as pcb.h's pcb_tanh, in y's dtype (fp32 or fp64)."""
    f = _PCB_MATH[y.dtype]
    y2 = y * y
    q = _c(f["series"][0], y)
    for coef in f["series"][1:]:
        q = q * y2 + _c(coef, y)
    series = torch.where(y == 0, y, y + y * (y2 * q))
    one = _c(f["tanh_one"], y)
    a = torch.where(y < 0, -y, y)
    p, two_k = _pcb_exp_split(2.0 * torch.where(a > one, one, a))
    t = two_k * p + (two_k - 1.0)
    big = torch.where(a >= one, 1.0, t / (t + 2.0))
    return torch.where(a < _PCB_TANH_SERIES_MAX, series, torch.where(y < 0, -big, big))


def _pcb_scores(d, S, m, lo, hi, K):
    """g = exp(K s) tanh(d S), each step in the compute type; s = ((m - lo) / (hi -
    lo))^2, 0 where the clamped magnitudes have no spread."""
    if hi > lo:
        u = (m - lo) / (hi - lo)
        s = u * u
    else:
        s = torch.zeros_like(m)
    return pcb_exp(K * s) * pcb_tanh(d * S)


def _pcb_scale(g, theta, top):
    """(clamp(g, theta, top) - theta) / (top - theta) in the compute type; 0 if top == theta."""
    if top == theta:
        return torch.zeros_like(g)
    return (_clamp(g, theta, top) - theta) / (top - theta)


def _pcb_unit(d, ratio, clamp):
    """The merged task vector of one unit from its deltas d [K, n] (compute type)."""
    K, n = d.shape
    cdt = d.dtype
    S = _ordered_sum(d)
    num = torch.zeros(n, dtype=cdt, device=d.device)
    den = torch.zeros(n, dtype=cdt, device=d.device)
    for k in range(K):
        a = d[k].abs()
        lo, hi = _at_ranks(a, (int(n * clamp), int(n * (1.0 - clamp) - 1)))
        m = _clamp(a, lo, hi)
        t = torch.where(d[k] > 0, m, torch.where(d[k] < 0, -m, 0.0))
        g = _pcb_scores(d[k], S, m, lo, hi, K)
        theta, top = _at_ranks(g, (int(n * (1.0 - ratio)), n - 1))
        scale = _pcb_scale(g, theta, top)
        num = num + t * scale
        den = den + scale
    return num / torch.where(den < PCB_SCALE_SUM_MIN, PCB_SCALE_SUM_MIN, den)


def pcb_merge(base, models, *, ratio, lam=1.0, scope="tensor", clamp=1e-4):
    """PCB merging of `models` onto `base` (tensors, or lists of tensors): see
    docs/semantics.md. Sorts (this defines the op; the kernels select without
    sorting). Returns a new tensor (list) in base's dtypes."""
    is_list = isinstance(base, (list, tuple))
    base_list = list(base) if is_list else [base]
    model_lists = [list(m) if is_list else [m] for m in models]
    cdts = [_compute_dtype(t.dtype) for t in base_list]
    units = [[i] for i in range(len(base_list))] if scope == "tensor" else [list(range(len(base_list)))]
    out = [None] * len(base_list)
    for unit in units:
        # A unit computes in its widest compute type; deltas formed per position first.
        cdt = torch.float64 if any(cdts[i] == torch.float64 for i in unit) else torch.float32
        d = torch.stack([torch.cat([(m[i].reshape(-1).to(cdts[i]) - base_list[i].reshape(-1).to(cdts[i])).to(cdt)
                                    for i in unit]) for m in model_lists])
        merged = _pcb_unit(d, ratio, clamp) if d.shape[1] else d[0]
        start = 0
        for i in unit:
            b = base_list[i]
            x = merged[start:start + b.numel()]
            out[i] = (b.reshape(-1).to(cdt) + x * lam).to(b.dtype).reshape(b.shape)
            start += b.numel()
    return out if is_list else out[0]
