"""Task-vector merges (task arithmetic, TIES, DARE, breadcrumbs, DELLA, PCB): our fused kernels vs the best
plain torch vs mergekit vs torch's lerp_.

One run on a realistic tensor set: the weights of one Llama-7B transformer block (q, k,
v, o 4096x4096; gate, up 11008x4096; down 4096x11008; two norms 4096: n = 202,383,360
parameters per model), a base and K = 3 (--models) fine-tunes of it (base ~ N(0, 0.02^2),
each model = base + N(0, 0.001^2), stored in the dtype), for every dtype of --dtypes;
--quick: the same block with every side divided by 64 (n = 49,536). One case per dtype
(shape = n, the elements of one model); rows:
  lerp_            torch's in-place lerp_ over two scratch buffers of (K + 2) n / 3
                   elements each, so it moves the op's traffic: the bandwidth ceiling
  task_arithmetic  base + sum_k w_k (m_k - base)                (w = 0.3, 0.4, 0.5, ...)
  ties             magnitude density 0.2 per tensor, consensus sum, normalize
  dare_linear      random density 0.2, rescale l1
  dare_ties        random density 0.2, rescale l1, consensus sum
  breadcrumbs      magnitude_outliers density 0.2, gamma 0.01 per tensor (mergekit's
                   breadcrumbs: no consensus, no rescale)
  della            mergekit's della: della_magprune density 0.2, epsilon 0.15 (keep
                   probabilities 0.05 to 0.35 by magnitude rank within each row),
                   rescale l1, consensus sum, normalize
  pcb              PCB merging, ratio 0.2, clamp 1e-4, per tensor (no mergekit row:
                   mergekit has no PCB)
each op with the impls
  m2n2_kernels     one call on the whole list of tensors (the multi-tensor form) per
                   backend of the device (cpp on CPU; on a GPU the CUDA C++ kernel as
                   "cpp" and the Triton one, each checked equal to the first bit for
                   bit), returning new tensors as the baselines do; speedup_vs_torch =
                   best torch's ms / its ms
  m2n2_kernels out=  the same calls writing into outputs allocated (and touched) before
                   the timing, as lerp_ writes in place: the kernel's own time, what the
                   summary's "per pass" compares with the ceiling
  best torch       the best plain-torch code per tensor, in fp32: task arithmetic as
                   base (1 - sum w) + sum w_k m_k with add_(alpha=); TIES with each model's
                   threshold from kthvalue of |d_k| (as FusionBench; it keeps every tie at
                   the threshold), masks, sign election and mix; DARE with a rand < density
                   mask, the l1 rescale and the mix; breadcrumbs with both thresholds
                   from kthvalue (the band between them, every tie kept); DELLA with each
                   row's ranks from one sort (its indices scattered back), rand <
                   probability, the l1 rescale and TIES' election; PCB as the authors' code (K x n
                   stacked deltas, fp32 exp and tanh) with kthvalue for its sort
  mergekit         only where `import mergekit` works and it has
                   mergekit.merge_methods.api.merge_tensors (left out with a note
                   otherwise): its own methods, one merge_tensors call per tensor, in the
                   storage dtype (as mergekit computes)
  torch reference  backend="torch" (reference.py, sort based): with --quick or --reference
                   only, far too slow at full size
gbps counts the op's minimal traffic for every row: read base and the K models once and
write the output, (K + 2) n elements; time_vs_ceiling = ms / lerp_'s ms. Our kernel reads
its inputs more than once (the stderr summary's "passes"): task arithmetic once; TIES,
in tensors of >= 2^18 elements, the sample of the candidate window (min(2^19, n/16)
elements of each input: that fraction of a pass) + the window pass (counts, and the
keys inside the window kept) + the fused pass; in smaller tensors 2 radix-selection
passes + the fused pass, + 1 statistics pass where a model's threshold has more ties
than it keeps (exactly k are kept: bf16 deltas tie often, fp32 ones rarely); a window
that misses falls back to the radix passes as well, which the count does not see (a
normal N(0, s^2) delta set does not miss); DARE with the l1 rescale 2 (statistics +
fused); DELLA 2 as DARE (each ranking every row: a histogram pass, and a sort
where many draws fall between a bucket's bounds); breadcrumbs as TIES, its selection passes reading every model twice (two
thresholds per model: 2K virtual models), so counted (2K + 1) / (K + 1) passes each;
PCB 1 pass for the clamp bounds (their ranks lie near the ends: extreme_select.h;
2 radix passes where a unit is too large for it), for the score threshold in tensors
of >= 2^18 elements the window's sample (every 16th to 64th tile: that fraction of a
pass, as the kernel picks it for the call's memory budget) + its pass,
else 2 radix passes, then the fused pass. These are the CPU kernel's passes (16-bit
digits); the GPU kernels select
with 11-bit digits (no window), one pass more per selection and the statistics pass,
which the summary does not count.
extra_mib: the peak resident memory of a call beyond what was allocated before it, less
the output it returns (n elements in the storage dtype, alike for every impl; the lerp_
and out= rows write into memory allocated before). Each call allocates its output: our API returns new tensors, so
our ms includes faulting in those pages, as the baselines' do.
Timing: every impl is called once first (its memory measurement and warm-up), then
--reps rounds time every impl of every op once in turn; ms is the median, ms_min the
fastest. Values: before timing, task arithmetic's and TIES' outputs (best torch, and
mergekit's in float32) are checked against ours: task arithmetic close within rounding,
TIES equal in > 99.9% of the elements no model ties at its threshold; DARE's draws
differ by design (a keyed generator in ours), so only the merged delta's L1 norm is
compared (within 5%); breadcrumbs equal in > 99.9% of the elements no model ties at one
of its two thresholds; PCB's best torch close to ours in > 99% of the elements.
CSV columns: benchmarks/_common.py, KERNEL_FIELDS, to stdout (and --csv); a summary
against the targets (TIES >= 10x mergekit and >= 3x best torch; DARE and task arithmetic
>= 3x mergekit; ms within 3x lerp_'s ms per pass; extra memory <= 1% of the inputs) to
stderr.

    python benchmarks/bench_merge_methods.py                     # one 7B block, K = 3
    python benchmarks/bench_merge_methods.py --dtypes bfloat16 --reps 3 --csv out.csv
    python benchmarks/bench_merge_methods.py --scale 4 --reps 3  # a block with every side / 4 (n = 12.6M)
    python benchmarks/bench_merge_methods.py --quick             # tiny shapes: a smoke run
    python benchmarks/bench_merge_methods.py --flat 4096 --tensors 64 --reps 5  # a unit's fixed costs
"""
import inspect
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import KernelRows, _sync, dtype_name, kernel_backends, parser, peak_extra_bytes  # noqa: E402

import m2n2_kernels as mk  # noqa: E402

DENSITY = 0.2
SEED = 1234
RESCALE_MIN = 1e-7  # mergekit's eps for the l1 rescale (docs/semantics.md)
GAMMA = 0.01  # breadcrumbs drops this fraction of each model's largest |d| (mergekit's default)
OPS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "della", "pcb")
DELLA_EPSILON = 0.15  # mergekit's default
PCB_RATIO = 0.2  # PCB keeps this fraction of each model's scores
PCB_CLAMP = 1e-4  # the authors' min/max ratio


def selection_budget(input_bytes):
    """The CPU kernels' selection memory for a call (selection_memory_budget in
    csrc/cpu/task_merge_kernels.cpp): 0.5% of its input bytes, 512 KiB at least."""
    return max(512 << 10, int(0.005 * input_bytes))


def pcb_sample_fraction(s, K, budget, key_bytes):
    """The fraction of a pass that PCB's window sample reads in a unit of s elements, as
    pcb_pick_sample (csrc/cpu/pcb_kernels.cpp) picks it: every 64th or 32nd tile (of 256
    elements, in chunks of 2^16) where the budget holds twice the keys expected inside
    the window and 4096 keys per thread, else every 16th."""
    q = int(s * (1 - PCB_RATIO)) / s
    for stride in (64, 32, 16):
        m = sum(min(256, min(s, c + 2 ** 16) - t)
                for c in range(0, s, 2 ** 16) for t in range(c, min(s, c + 2 ** 16), stride * 256))
        margin = 4 * math.sqrt(m * q * (1 - q)) + 2
        lo, hi = math.floor(q * m - margin), math.ceil(q * m + margin)
        fits = lo >= 0 and hi < m
        expected = int(s * (hi - lo) / m) if fits else 0
        if stride == 16 or (fits and (2 * K * expected + torch.get_num_threads() * 4096) * key_bytes <= budget):
            return m / s
CEILING = "lerp_"
CEILING_IMPL = "torch lerp_ (in place)"
OURS = "m2n2_kernels"
OURS_OUT = "m2n2_kernels out="  # the same calls into preallocated outputs
BEST = "best torch"
MERGEKIT = "mergekit"
REFERENCE = "torch reference"
# mergekit's method names and parameters for the same jobs (its defaults: ties normalize,
# dare_* rescale l1, no normalize).
MERGEKIT_METHODS = {
    "task_arithmetic": ("task_arithmetic", {}),
    "ties": ("ties", {"density": DENSITY, "normalize": True}),
    "dare_linear": ("dare_linear", {"density": DENSITY, "rescale": True}),
    "dare_ties": ("dare_ties", {"density": DENSITY, "rescale": True}),
    "breadcrumbs": ("breadcrumbs", {"density": DENSITY, "gamma": GAMMA}),
    "della": ("della", {"density": DENSITY, "epsilon": DELLA_EPSILON}),
}


def block_shapes(quick, scale=1):
    """One Llama-7B transformer block's weights (hidden 4096, MLP 11008), every side
    divided by `scale`; --quick: / 64."""
    h, f = (64, 172) if quick else (4096 // scale, 11008 // scale)
    return [(h, h)] * 4 + [(f, h), (f, h), (h, f), (h,), (h,)]


def make_inputs(shapes, K, dtype, gen, device):
    """Drawn on the CPU (the same values on every device), then moved to `device`."""
    base, models = [], [[] for _ in range(K)]
    for s in shapes:
        b = torch.randn(s, generator=gen).mul_(0.02)
        for k in range(K):
            models[k].append(torch.randn(s, generator=gen).mul_(0.001).add_(b).to(device, dtype))
        base.append(b.to(device, dtype))
    return base, models


# ---- our kernel ---------------------------------------------------------------------

def ours(op, base, models, w, backend, out=None):
    if op == "task_arithmetic":
        return mk.task_arithmetic(base, models, w, backend=backend, out=out)
    if op == "ties":
        return mk.ties_merge(base, models, w, DENSITY, backend=backend, out=out)
    if op == "pcb":
        return mk.pcb_merge(base, models, ratio=PCB_RATIO, clamp=PCB_CLAMP, backend=backend, out=out)
    if op == "breadcrumbs":
        return mk.breadcrumbs_merge(base, models, w, DENSITY, gamma=GAMMA, backend=backend, out=out)
    if op == "della":
        return mk.della_merge(base, models, w, DENSITY, epsilon=DELLA_EPSILON, seed=SEED, backend=backend, out=out)
    return mk.dare_merge(base, models, w, DENSITY, seed=SEED, consensus="sum" if op == "dare_ties" else None,
                         backend=backend, out=out)


# ---- the best plain torch, per tensor, in fp32 ----------------------------------------

def _delta_into(dst, m, bf):
    """dst (fp32, flat) = fp32(m) - bf, without rounding through m's dtype."""
    if m.dtype == torch.float32:
        return torch.sub(m.reshape(-1), bf, out=dst)
    return dst.copy_(m.reshape(-1)).sub_(bf)


def _keep_count(n):
    return max(1, int(DENSITY * n))


def _elect_and_mix(E, w, bf, normalize):
    """TIES' sign election (sum) over the weighted deltas E (K x n, zeros dropped) and
    the mix: bf + x / D (normalize) or bf + x."""
    S = E.sum(0)
    sigma = torch.where(S >= 0, 1.0, -1.0)
    del S
    x = torch.zeros_like(bf)
    D = torch.zeros_like(bf) if normalize else None
    for k in range(E.shape[0]):
        agree = torch.mul(E[k], sigma) > 0  # a zero never agrees
        x.add_(torch.where(agree, E[k], 0.0))
        if normalize:
            D.add_(agree, alpha=w[k])
        del agree
    if normalize:
        x.div_(D.masked_fill_(D == 0, 1.0))
    return x.add_(bf)


def _finish(x, b):
    return x.view(b.shape) if b.dtype == torch.float32 else x.view(b.shape).to(b.dtype)


def torch_task_arithmetic(base, models, w):
    """base + sum_k w_k (m_k - base) = base (1 - sum w) + sum w_k m_k: K + 1 fused passes."""
    out = []
    W = math.fsum(w)
    for i, b in enumerate(base):
        acc = torch.mul(b.reshape(-1), 1.0 - W) if b.dtype == torch.float32 else b.reshape(-1).float().mul_(1.0 - W)
        for k, m in enumerate(models):
            acc.add_(m[i].reshape(-1), alpha=w[k])  # bf16 models are widened on the fly
        out.append(_finish(acc, b))
    return out


def torch_ties(base, models, w):
    """Per tensor: each model's threshold from kthvalue of |d_k| (as FusionBench), mask,
    sign election (sum), normalized mix."""
    out = []
    K = len(models)
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        E = torch.empty(K, n, device=bf.device)
        for k in range(K):
            d = _delta_into(E[k], models[k][i], bf)
            if n > 1:
                a = d.abs()
                thr = a.kthvalue(n - _keep_count(n) + 1).values
                d.masked_fill_(a < thr, 0.0)
                del a
            d.mul_(w[k])
        out.append(_finish(_elect_and_mix(E, w, bf, normalize=True), b))
        del E
    return out


def _band(n):
    """breadcrumbs' descending ranks [start, start + t) of n (docs/semantics.md)."""
    t, top = int(DENSITY * n), int(GAMMA * n)
    return min(top, n - t), t


def torch_breadcrumbs(base, models, w):
    """Per tensor: each model's two thresholds from kthvalue of |d_k| (the int(GAMMA n)-th
    and the (int(GAMMA n) + int(DENSITY n))-th largest), the band between them (every
    tie kept), the plain weighted sum."""
    out = []
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        x = bf.clone()
        d = torch.empty(n, device=bf.device)
        start, t = _band(n)
        for k in range(len(models)):
            _delta_into(d, models[k][i], bf)
            a = d.abs()
            keep = a >= a.kthvalue(n - (start + t) + 1).values if start + t > 0 else torch.zeros_like(a, dtype=bool)
            if start > 0:
                keep &= a < a.kthvalue(n - start + 1).values
            x.add_(d.mul_(keep), alpha=w[k])
            del a, keep
        out.append(_finish(x, b))
    return out


def torch_dare(base, models, w, *, ties, gen):
    """Per tensor: keep each delta element with probability DENSITY (rand < density), the
    l1 rescale (mergekit's), then the plain sum (dare_linear) or TIES' election (dare_ties)."""
    out = []
    K = len(models)
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        E = torch.empty(K, n, device=bf.device) if ties else None
        x = None if ties else bf.clone()
        d_buf = None if ties else torch.empty(n, device=bf.device)
        for k in range(K):
            d = _delta_into(E[k] if ties else d_buf, models[k][i], bf)
            full = float(torch.linalg.vector_norm(d, 1))
            d.mul_(torch.rand(n, generator=gen, device=bf.device) < DENSITY)
            kept = float(torch.linalg.vector_norm(d, 1))
            s = full / kept if full >= RESCALE_MIN and kept >= RESCALE_MIN else 1.0
            if ties:
                d.mul_(s * w[k])
            else:
                x.add_(d, alpha=s * w[k])
        out.append(_finish(_elect_and_mix(E, w, bf, normalize=False) if ties else x, b))
    return out


def torch_della(base, models, w, *, gen):
    """Per tensor (rows along dim 1; a 1-D tensor one row): each model's ranks within its
    rows from one sort (indices scattered back), keep with probability (density -
    epsilon) + rank / (B - 1) 2 epsilon (rand < p), the l1 rescale, TIES' election
    (mergekit's della: consensus sum, normalize)."""
    out = []
    K = len(models)
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        rows = b.reshape(b.shape[0], b.shape[1], -1) if b.dim() >= 2 else b.reshape(1, -1, 1)
        B = rows.shape[1]
        E = torch.empty(K, n, device=bf.device)
        ramp = torch.arange(B, device=bf.device, dtype=torch.float32).div_(max(B - 1, 1)).mul_(2 * DELLA_EPSILON)
        ramp = ramp.add_(DENSITY - DELLA_EPSILON).reshape(1, B, 1).expand(rows.shape)
        for k in range(K):
            d = _delta_into(E[k], models[k][i], bf)
            full = float(torch.linalg.vector_norm(d, 1))
            order = d.abs().reshape(rows.shape).argsort(dim=1)
            p = torch.empty(rows.shape, device=bf.device).scatter_(1, order, ramp)
            d.mul_(torch.rand(n, generator=gen, device=bf.device) < p.reshape(-1))
            kept = float(torch.linalg.vector_norm(d, 1))
            s = full / kept if full >= RESCALE_MIN and kept >= RESCALE_MIN else 1.0
            d.mul_(s * w[k])
        out.append(_finish(_elect_and_mix(E, w, bf, normalize=True), b))
    return out


def torch_pcb(base, models):
    """Per tensor, the authors' PCB formulas in fp32 with kthvalue instead of their sort:
    the clamp bounds of |d_k|, exp(K s) tanh(d_k S) scores, the drop threshold and the
    scaled mix (docs/semantics.md, "PCB merging"; fp32 exp and tanh, so a few scores
    next to a threshold round differently from ours)."""
    out = []
    K = len(models)
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        D = torch.empty(K, n, device=bf.device)
        for k in range(K):
            _delta_into(D[k], models[k][i], bf)
        A = D.abs()
        lo = A.kthvalue(int(n * PCB_CLAMP) + 1, dim=1, keepdim=True).values
        hi = A.kthvalue(int(n * (1 - PCB_CLAMP) - 1) + 1, dim=1, keepdim=True).values
        A = torch.minimum(torch.maximum(A, lo), hi)  # the clamped magnitudes
        spread = hi - lo
        g = ((A - lo) / torch.where(spread > 0, spread, 1.0)).square_().mul_(K).exp_()
        g.mul_(torch.tanh(D * D.sum(0)))  # the scores: intra x inter balancing
        theta = g.kthvalue(int(n * (1 - PCB_RATIO)) + 1, dim=1, keepdim=True).values
        G = g.amax(1, keepdim=True)
        width = G - theta
        g = torch.minimum(torch.maximum(g, theta), G).sub_(theta).div_(torch.where(width > 0, width, 1.0))
        A.mul_(torch.sign(D)).mul_(g)  # the clamped deltas, scaled
        x = A.sum(0).div_(g.sum(0).clamp_(min=1e-12))
        out.append(_finish(x.add_(bf), b))
        del D, A, g
    return out


def best_torch(op, base, models, w, gen):
    if op == "task_arithmetic":
        return torch_task_arithmetic(base, models, w)
    if op == "ties":
        return torch_ties(base, models, w)
    if op == "pcb":
        return torch_pcb(base, models)
    if op == "breadcrumbs":
        return torch_breadcrumbs(base, models, w)
    if op == "della":
        return torch_della(base, models, w, gen=gen)
    return torch_dare(base, models, w, ties=op == "dare_ties", gen=gen)


# ---- mergekit -----------------------------------------------------------------------

def mergekit_merge_tensors():
    """mergekit.merge_methods.api.merge_tensors, or None (with a note on stderr)."""
    try:
        import mergekit  # noqa: F401
        from mergekit.merge_methods import api
    except Exception as e:  # noqa: BLE001 (any failure to import leaves the rows out)
        print(f"# mergekit: left out (import failed: {type(e).__name__}: {e})", file=sys.stderr)
        return None
    fn = getattr(api, "merge_tensors", None)
    if fn is None:
        print("# mergekit: left out (this version has no mergekit.merge_methods.api.merge_tensors)", file=sys.stderr)
        return None
    params = inspect.signature(fn).parameters
    missing = [p for p in ("parameters", "base_index") if p not in params]
    if missing:
        print(f"# mergekit: left out (merge_tensors{inspect.signature(fn)} lacks {missing})", file=sys.stderr)
        return None
    version = getattr(sys.modules["mergekit"], "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v
            version = _v("mergekit")
        except Exception:  # noqa: BLE001
            version = "?"
    print(f"# mergekit {version}: merge_tensors{inspect.signature(fn)}", file=sys.stderr)
    return fn


def mergekit_fn(merge_tensors, op, base, models, w):
    name, extra = MERGEKIT_METHODS[op]
    parameters = dict(extra, weight=list(w))
    try:
        from mergekit import merge_methods
        method = merge_methods.get(name)
    except (ImportError, AttributeError):  # a version without registry.get: by name
        method = name
    if not isinstance(method, str) and not type(method).__module__.startswith("mergekit."):
        # e.g. m2n2_kernels.mergekit.install() put our fused op in mergekit's registry
        raise RuntimeError(f"mergekit's {name!r} is {type(method).__module__}.{type(method).__name__}, "
                           "not mergekit's own code")

    def run():
        return [merge_tensors([b] + [m[i] for m in models], method, parameters=parameters, base_index=0)
                for i, b in enumerate(base)]
    return run


# ---- value checks (outside timing) ---------------------------------------------------

def tie_stats(base, models):
    """Per tensor: (mask of elements where some model's |d| equals its kthvalue threshold,
    whether some model keeps only part of its threshold's ties: our extra pass)."""
    masks, partial = [], []
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        at = torch.zeros(n, dtype=torch.bool, device=bf.device)
        part = False
        for m in models:
            a = _delta_into(torch.empty(n, device=bf.device), m[i], bf).abs_()
            thr = a.kthvalue(n - _keep_count(n) + 1).values
            at |= a == thr
            part |= int((a >= thr).sum()) > _keep_count(n)
            del a
        masks.append(at)
        partial.append(part)
    return masks, partial


def band_ties(base, models):
    """Per tensor: the mask of elements where some model's |d| equals one of its two
    breadcrumbs thresholds (where a baseline may keep another tie than ours)."""
    masks = []
    for i, b in enumerate(base):
        n = b.numel()
        bf = b.reshape(-1).float()
        at = torch.zeros(n, dtype=torch.bool, device=bf.device)
        start, t = _band(n)
        for m in models:
            a = _delta_into(torch.empty(n, device=bf.device), m[i], bf).abs_()
            for rank in (start, start + t):
                if 0 < rank <= n:
                    at |= a == a.kthvalue(n - rank + 1).values
            del a
        masks.append(at)
    return masks


def _close(x, y, dtype):
    x, y = x.reshape(-1).float(), y.reshape(-1).float()
    if dtype == torch.bfloat16:  # one bf16 rounding apart at most
        return torch.isclose(x, y, rtol=2.0 ** -7, atol=1e-9)
    return torch.isclose(x, y, rtol=1e-5, atol=1e-6 * 0.02)


def check_values(op, name, got, want, base, models, dtype, ties_at):
    """Raises (best torch) or returns a reason (mergekit) when `got` is not ours' job."""
    if op == "task_arithmetic":
        bad = sum(int((~_close(g, o, dtype)).sum()) for g, o in zip(got, want))
        if bad:
            return f"{op}: {name} differs from ours in {bad} elements beyond rounding"
    elif op == "pcb":
        total = sum(b.numel() for b in base)
        agree = sum(int(_close(g, o, dtype).sum()) for g, o in zip(got, want))
        print(f"# {dtype_name(dtype)} pcb: {name} equals ours in {agree / total:.4%} of the elements", file=sys.stderr)
        if agree < 0.99 * total:  # fp32 exp/tanh move a few scores across a threshold, no more
            return f"{op}: {name} equals ours in only {agree}/{total} elements"
    elif op == "breadcrumbs":
        total = sum(b.numel() for b in base)
        tied = band_ties(base, models)
        free = sum(int((~t).sum()) for t in tied)
        agree = sum(int((_close(g, o, dtype) & ~t).sum()) for g, o, t in zip(got, want, tied))
        print(f"# {dtype_name(dtype)} breadcrumbs: {name} equals ours in {agree / max(free, 1):.4%} of the "
              f"{free / total:.2%} no model ties at a threshold", file=sys.stderr)
        if agree < 0.999 * free:
            return f"{op}: {name} equals ours in only {agree}/{free} tie-free elements"
    elif op == "ties":
        total = sum(b.numel() for b in base)
        free = sum(int((~t).sum()) for t in ties_at)
        agree = sum(int((_close(g, o, dtype) & ~t).sum()) for g, o, t in zip(got, want, ties_at))
        agree_all = sum(int(_close(g, o, dtype).sum()) for g, o in zip(got, want))
        print(f"# {dtype_name(dtype)} ties: {name} equals ours in {agree_all / total:.4%} of the elements, "
              f"{agree / max(free, 1):.4%} of the {free / total:.2%} no model ties at its threshold", file=sys.stderr)
        if agree < 0.999 * free:
            return f"{op}: {name} equals ours in only {agree}/{free} tie-free elements"
    else:
        def l1(out):
            return math.fsum(float(torch.linalg.vector_norm(o.float() - b.float(), 1)) for o, b in zip(out, base))
        g, o = l1(got), l1(want)
        if abs(g - o) > 0.05 * o:
            return f"{op}: {name}'s merged delta has L1 norm {g:.6g}, ours {o:.6g}"
    return None


# ---- the run --------------------------------------------------------------------------

def run(args):
    device = torch.device(args.device)
    backends = kernel_backends(device)  # cpp on CPU; CUDA C++ and Triton on a GPU
    rows = KernelRows(args.csv)
    K = args.models
    w = [0.3 + 0.1 * (k % 3) for k in range(K)]
    shapes = [(args.flat,)] * args.tensors if args.flat else block_shapes(args.quick, args.scale)
    n = sum(math.prod(s) for s in shapes)
    with_reference = args.quick or args.reference
    merge_tensors = mergekit_merge_tensors()
    for dtype in args.dtypes:
        elem = torch.empty((), dtype=dtype).element_size()
        gen = torch.Generator().manual_seed(0)
        base, models = make_inputs(shapes, K, dtype, gen, device)
        traffic = (K + 2) * n * elem
        out_bytes = n * elem
        m_ceil = (K + 2) * n // 3
        sa = torch.rand(m_ceil, generator=gen).to(device, dtype)
        sb = torch.rand(m_ceil, generator=gen).to(device, dtype)
        rng = torch.Generator(device=device).manual_seed(SEED)
        outs = [torch.zeros_like(b) for b in base]  # touched once, before any timing

        # (op, impl, backend) -> fn; the ceiling first
        impls = {(CEILING, CEILING_IMPL, "torch"): lambda: sa.lerp_(sb, 0.3)}
        for op in OPS:
            for be in backends:
                impls[(op, OURS, be)] = lambda op=op, be=be: ours(op, base, models, w, be)
                impls[(op, OURS_OUT, be)] = lambda op=op, be=be: ours(op, base, models, w, be, out=outs)
            impls[(op, BEST, "torch")] = lambda op=op: best_torch(op, base, models, w, rng)
            if merge_tensors is not None and op in MERGEKIT_METHODS:
                try:
                    impls[(op, MERGEKIT, "torch")] = mergekit_fn(merge_tensors, op, base, models, w)
                except RuntimeError as e:
                    print(f"# mergekit: left out ({e})", file=sys.stderr)
                    merge_tensors = None
                    for o in MERGEKIT_METHODS:
                        impls.pop((o, MERGEKIT, "torch"), None)
            if with_reference:
                impls[(op, REFERENCE, "torch")] = lambda op=op: ours(op, base, models, w, "torch")

        # One call each: the memory measurement, the warm-up, the value checks.
        ties_at, partial = tie_stats(base, models)
        extra, held, drop = {}, {}, None
        for key, fn in impls.items():
            op, impl, _ = key
            if impl == MERGEKIT and drop:
                continue
            box = []
            try:
                peak = peak_extra_bytes(lambda: box.append(fn()), device)
            except Exception as e:  # noqa: BLE001 (only mergekit's rows may go)
                if impl != MERGEKIT:
                    raise
                drop = f"{op} failed: {type(e).__name__}: {e}"
                continue
            extra[key] = max(0.0, peak - (0 if op == CEILING or impl == OURS_OUT else out_bytes))
            if op == CEILING or impl == OURS_OUT:
                continue
            if impl == OURS:
                got = box.pop()
                if op not in held:  # the first backend's result: what the baselines are checked against
                    held[op] = got
                elif not all(torch.equal(g, h) for g, h in zip(got, held[op])):
                    raise RuntimeError(f"{dtype_name(dtype)} {op}: backend {key[2]} differs from {backends[0]}")
                continue
            reason = None
            if impl == BEST or (impl == MERGEKIT and dtype == torch.float32):
                reason = check_values(op, impl, box.pop(), held[op], base, models, dtype, ties_at)
            if reason and impl == BEST:
                raise RuntimeError(f"{dtype_name(dtype)} {reason}: the baseline does not do our job")
            if reason:  # mergekit doing another job: its ratios would mean nothing
                drop = reason
            del box
        held.clear()
        if drop:
            print(f"# mergekit: left out ({dtype_name(dtype)} {drop})", file=sys.stderr)
            for op in MERGEKIT_METHODS:
                impls.pop((op, MERGEKIT, "torch"), None)
            merge_tensors = None

        times = {key: [] for key in impls}
        for rep in range(args.reps):
            t_round = time.perf_counter()
            for key, fn in impls.items():
                _sync(device)
                t0 = time.perf_counter()
                result = fn()
                _sync(device)
                times[key].append((time.perf_counter() - t0) * 1e3)
                del result
            print(f"# {dtype_name(dtype)}: round {rep + 1}/{args.reps} took {time.perf_counter() - t_round:.1f} s",
                  file=sys.stderr)

        ms = {key: statistics.median(t) for key, t in times.items()}
        ceiling_ms = ms[(CEILING, CEILING_IMPL, "torch")]
        for key, t in times.items():
            op, impl, backend = key
            torch_ms = ms[(op, BEST, "torch")] if impl in (OURS, OURS_OUT) else None
            rows.row(op=op, impl=impl, backend=backend, device=device, dtype=dtype, shape=n, ms=ms[key],
                     ms_min=min(t), reps=len(t), nbytes=traffic, torch_ms=torch_ms, ceiling=CEILING,
                     ceiling_ms=ceiling_ms, extra_bytes=extra[key])

        sizes = [b.numel() for b in base]
        # TIES per tensor (task_merge_kernels.cpp): the window (its sample's fraction + 1
        # pass) from 2^18 elements on, else 2 radix passes (+ 1 for partly kept ties);
        # then the fused pass.
        ties_passes = 1 + sum((1 + min(2 ** 19, s // 16) / s) * s if s >= 2 ** 18 else (2 + p) * s
                              for s, p in zip(sizes, partial)) / n
        select = 4 if dtype == torch.float64 else 2  # radix passes over 64- or 32-bit keys
        twice = (2 * K + 1) / (K + 1)  # a selection pass of breadcrumbs reads every model twice
        # PCB: the clamp bounds in one pass where their ranks lie within extreme_select's
        # depth limit (csrc/cpu/extreme_select.h), else by radix; the score threshold by a
        # window (its sample, then one pass) from 2^18 elements on, else by radix
        # (pcb_kernels.cpp).
        bounds_passes = sum((1 if int(s * PCB_CLAMP) + 1 <= min(2 ** 14, max(1, s // 64)) else select) * s
                            for s in sizes) / n
        budget = selection_budget(n * (K + 1) * base[0].element_size())
        key_bytes = 8 if dtype == torch.float64 else 4
        drop_passes = sum((1 + pcb_sample_fraction(s, K, budget, key_bytes) if s >= 2 ** 18 else select) * s
                          for s in sizes) / n
        passes = {"task_arithmetic": 1.0, "ties": ties_passes, "dare_linear": 2.0, "dare_ties": 2.0, "della": 2.0,
                  "breadcrumbs": 1 + twice * (ties_passes - 1), "pcb": bounds_passes + drop_passes + 1.0}
        for be in backends:
            summary = []
            for op in OPS:
                key = (op, OURS, be)
                mk_key = (op, MERGEKIT, "torch")
                summary.append(dict(
                    dtype=dtype_name(dtype), op=op, ms=ms[key],
                    vs_torch=ms[(op, BEST, "torch")] / ms[key],
                    vs_mergekit=ms[mk_key] / ms[key] if mk_key in ms else None,
                    vs_ceiling=ms[key] / ceiling_ms, out_vs_ceiling=ms[(op, OURS_OUT, be)] / ceiling_ms,
                    passes=passes[op],
                    extra_pct=100.0 * extra[key] / ((K + 1) * n * elem),
                ))
            print_summary(summary, K, n, be)  # per dtype: a run cut short keeps what it measured
        del base, models, sa, sb, impls
    rows.close()


def print_summary(summary, K, n, backend):
    """Ours against the issue's targets, on stderr (the CSV is stdout's)."""
    want_mk = {"ties": 10.0, "task_arithmetic": 3.0, "dare_linear": 3.0, "dare_ties": 3.0}  # (none for breadcrumbs)
    want_torch = {"ties": 3.0}
    err = sys.stderr
    print(f"# summary: m2n2_kernels ({backend}), K = {K}, n = {n} per model; targets in brackets", file=err)
    head = (f"# {'dtype':<9} {'op':<16} {'ms':>10} {'vs torch':>15} {'vs mergekit':>16} {'vs lerp_':>9} "
            f"{'out= vs lerp_':>13} {'passes':>6} {'per pass':>15} {'extra % inputs':>15}")
    print(head, file=err)

    def mark(ok):
        return "ok" if ok else "MISS"
    for s in summary:
        op = s["op"]
        vt = f"{s['vs_torch']:.2f}x" + (f" [{want_torch[op]:g}x {mark(s['vs_torch'] >= want_torch[op])}]"
                                         if op in want_torch else "")
        vm = ("n/a" if s["vs_mergekit"] is None else f"{s['vs_mergekit']:.2f}x" + (
            f" [{want_mk[op]:g}x {mark(s['vs_mergekit'] >= want_mk[op])}]" if op in want_mk else ""))
        per_pass = s["out_vs_ceiling"] / s["passes"]
        pp = f"{per_pass:.2f} [3 {mark(per_pass <= 3.0)}]"
        ex = f"{s['extra_pct']:.3f} [1 {mark(s['extra_pct'] <= 1.0)}]"
        print(f"# {s['dtype']:<9} {op:<16} {s['ms']:>10.1f} {vt:>15} {vm:>16} {s['vs_ceiling']:>9.2f} "
              f"{s['out_vs_ceiling']:>13.2f} {s['passes']:>6.2f} {pp:>15} {ex:>15}", file=err)


def main():
    p = parser(__doc__, dtypes="float32,bfloat16")
    p.set_defaults(device="cpu")
    p.add_argument("--models", type=int, default=3, help="K, the fine-tuned models merged onto the base (default 3)")
    p.add_argument("--scale", type=int, default=1,
                   help="divide every side of the block by this (default 1; 4: n = 12.6M, where mergekit's rows "
                   "finish in minutes on 2 cores)")
    p.add_argument("--flat", type=int, default=0, metavar="N",
                   help="one flat buffer of N elements instead of the block (DELLA ranks it as one row: "
                   "its streamed kernel from 2^16 elements)")
    p.add_argument("--tensors", type=int, default=1, metavar="T",
                   help="with --flat: T flat buffers of N elements each, in one call (a model's many small "
                   "tensors, norms and biases: each its own unit under scope \"tensor\", so this times a unit's "
                   "fixed costs)")
    p.add_argument("--reference", action="store_true",
                   help="also time the torch reference (backend=\"torch\", sort based) at full size")
    args = p.parse_args()
    if args.models < 1:
        p.error("--models must be >= 1")
    if args.flat < 0:
        p.error("--flat must be a number of elements >= 1")
    if args.tensors < 1 or (args.tensors > 1 and not args.flat):
        p.error("--tensors must be >= 1, and more than 1 only with --flat")
    if args.scale < 1 or 64 % args.scale:
        p.error("--scale must divide 64 (1, 2, 4, 8, 16, 32, 64)")
    print(f"# build_info: {mk.build_info()}", file=sys.stderr)
    run(args)


if __name__ == "__main__":
    main()
