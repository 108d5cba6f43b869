"""Per-sample score gathering: m2n2_kernels.sample_scores against torch, in one run.

For each logits case (shape x dtype), on the same buffers, back to back:
  kind "logprob": torch = reference.sample_scores (an fp32 log_softmax of all the
      logits, gather at the targets, masked mean over the tokens) vs each backend;
  kind "correct": torch = (argmax(-1) == target) with the same masked mean, and
      argmax(-1) alone (the bar: "correct" within 1.2x of its time) vs each backend.
The targets are each row's argmax, so that "correct" must read every logit (the CPU
kernel stops reading a row early once its target is beaten; that never happens here).
A random 10% of the tokens are masked out (their rows are not read by the kernels).

Columns: benchmarks/_common.py, KERNEL_FIELDS (gbps: bytes of logits / median time;
time_vs_ceiling: ms / the argmax's ms, "correct" only).

    python benchmarks/bench_scores.py [--device cpu|cuda] [--reps 5] [--csv out.csv] [--quick]
        [--dtypes bfloat16,float32]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import KernelRows, kernel_backends, parser, peak_extra_bytes, time_ms  # noqa: E402

import m2n2_kernels as mk  # noqa: E402
from m2n2_kernels import reference  # noqa: E402

CASES = [(8, 512, 32000), (4096, None, 50257)]
QUICK_CASES = [(4, 64, 32000), (512, None, 50257)]


def make_inputs(batch, tokens, vocab, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (batch, vocab) if tokens is None else (batch, tokens, vocab)
    logits = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
    target = logits.argmax(-1)
    mask = torch.rand(shape[:-1], generator=g, device=device) >= 0.1
    return logits, target, mask


def masked_mean(per_token, mask):
    if per_token.dim() == 1:
        return torch.where(mask, per_token, 0.0)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)


def torch_correct(logits, target, mask):
    return masked_mean((logits.argmax(-1) == target).float(), mask)


def main():
    args = parser(__doc__.splitlines()[0], dtypes="bfloat16,float32").parse_args()
    device = torch.device(args.device)
    print(f"# device={device} threads={torch.get_num_threads()} build={mk.build_info()}", file=sys.stderr)
    rows = KernelRows(args.csv)
    backends = kernel_backends(device)
    for batch, tokens, vocab in QUICK_CASES if args.quick else CASES:
        shape = (batch, vocab) if tokens is None else (batch, tokens, vocab)
        for dtype in args.dtypes:
            logits, target, mask = make_inputs(batch, tokens, vocab, dtype, device)
            nbytes = logits.numel() * logits.element_size()
            # Check once that the kernels agree with torch on these inputs.
            for name in backends:
                got = mk.sample_scores(logits, target, kind="logprob", mask=mask, backend=name)
                want = reference.sample_scores(logits, target, kind="logprob", mask=mask)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
                got = mk.sample_scores(logits, target, kind="correct", mask=mask, backend=name)
                assert torch.equal(got, torch_correct(logits, target, mask)), name

            def run(op, impl, backend, fn, torch_ms=None, argmax_ms=None):
                ms, ms_min = time_ms(fn, device, reps=args.reps)
                argmax_ms = ms if op == "argmax" else argmax_ms
                rows.row(op=op, impl=impl, backend=backend, device=device, dtype=dtype, shape=shape, ms=ms,
                         ms_min=ms_min, reps=args.reps, nbytes=nbytes, torch_ms=torch_ms,
                         ceiling="argmax" if argmax_ms else None, ceiling_ms=argmax_ms,
                         extra_bytes=peak_extra_bytes(fn, device))
                return ms

            torch_ms = run("logprob", "torch", "torch",
                           lambda: reference.sample_scores(logits, target, kind="logprob", mask=mask))
            for name in backends:
                run("logprob", "m2n2_kernels", name,
                    lambda: mk.sample_scores(logits, target, kind="logprob", mask=mask, backend=name), torch_ms)
            argmax_ms = run("argmax", "torch argmax alone", "torch", lambda: logits.argmax(-1))
            torch_ms = run("correct", "torch", "torch", lambda: torch_correct(logits, target, mask), argmax_ms=argmax_ms)
            for name in backends:
                run("correct", "m2n2_kernels", name,
                    lambda: mk.sample_scores(logits, target, kind="correct", mask=mask, backend=name),
                    torch_ms, argmax_ms)
            del logits, target, mask
    rows.close()


if __name__ == "__main__":
    main()
