"""Per-sample score gathering: m2n2_kernels.sample_scores against torch, in one run.

For each logits case (shape x dtype), on the same buffers, back to back:
  kind "logprob": torch = reference.sample_scores (an fp32 log_softmax of all the
      logits, gather at the targets, masked mean over the tokens) vs each backend;
  kind "correct": torch = (argmax(-1) == target) with the same masked mean, and
      argmax(-1) alone (the bar: "correct" within 1.2x of its time) vs each backend.
The targets are each row's argmax, so that "correct" must read every logit (the CPU
kernel stops reading a row early once its target is beaten; that never happens here).
A random 10% of the tokens are masked out (their rows are not read by the kernels).

Columns: ms (median) and ms_min of `--reps` calls, gbps (bytes of logits / median
time), extra_mb (peak memory beyond the inputs during one call: the caching
allocator's peak on CUDA, the peak resident set on CPU), speedup_vs_torch
(torch ms / ms) and time_vs_argmax (ms / argmax ms, "correct" only).

    python benchmarks/bench_scores.py [--device cpu|cuda] [--reps 5] [--csv out.csv] [--quick]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CsvOut, peak_extra_bytes, time_ms  # noqa: E402

import m2n2_kernels as mk  # noqa: E402
from m2n2_kernels import _backend, reference  # noqa: E402

CASES = [(8, 512, 32000), (4096, None, 50257)]
QUICK_CASES = [(4, 64, 32000), (512, None, 50257)]
DTYPES = [torch.bfloat16, torch.float32]
FIELDS = ["case", "dtype", "kind", "impl", "ms", "ms_min", "gbps", "extra_mb", "speedup_vs_torch", "time_vs_argmax"]


def make_inputs(batch, tokens, vocab, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (batch, vocab) if tokens is None else (batch, tokens, vocab)
    logits = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
    target = logits.argmax(-1)
    mask = torch.rand(shape[:-1], generator=g, device=device) >= 0.1
    return logits, target, mask


def backends(device):
    if device == "cpu":
        return ["cpp"]
    names = ["cpp"] if _backend.cuda_compiled() else []
    return names + (["triton"] if _backend.triton_importable() else [])


def masked_mean(per_token, mask):
    if per_token.dim() == 1:
        return torch.where(mask, per_token, 0.0)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)


def torch_correct(logits, target, mask):
    return masked_mean((logits.argmax(-1) == target).float(), mask)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--csv", default=None, help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    args = parser.parse_args()
    device = args.device
    print(f"# device={device} threads={torch.get_num_threads()} build={mk.build_info()}", file=sys.stderr)
    out = CsvOut(FIELDS, args.csv)
    for batch, tokens, vocab in QUICK_CASES if args.quick else CASES:
        case = f"[{batch},{tokens},{vocab}]" if tokens else f"[{batch},{vocab}]"
        for dtype in DTYPES:
            logits, target, mask = make_inputs(batch, tokens, vocab, dtype, device)
            nbytes = logits.numel() * logits.element_size()
            # Check once that the kernels agree with torch on these inputs.
            for name in backends(device):
                got = mk.sample_scores(logits, target, kind="logprob", mask=mask, backend=name)
                want = reference.sample_scores(logits, target, kind="logprob", mask=mask)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
                got = mk.sample_scores(logits, target, kind="correct", mask=mask, backend=name)
                assert torch.equal(got, torch_correct(logits, target, mask)), name

            def run(kind, impl, fn, torch_ms=None, argmax_ms=None):
                ms, ms_min = time_ms(fn, device, reps=args.reps)
                extra = peak_extra_bytes(fn, device)
                out.row(
                    case=case, dtype=str(dtype).replace("torch.", ""), kind=kind, impl=impl,
                    ms=f"{ms:.3f}", ms_min=f"{ms_min:.3f}", gbps=f"{nbytes / ms / 1e6:.1f}",
                    extra_mb=f"{extra / 2**20:.1f}",
                    speedup_vs_torch=f"{torch_ms / ms:.2f}" if torch_ms else "",
                    time_vs_argmax=f"{ms / argmax_ms:.2f}" if argmax_ms else "",
                )
                return ms

            torch_ms = run("logprob", "torch", lambda: reference.sample_scores(logits, target, kind="logprob", mask=mask))
            for name in backends(device):
                run("logprob", name, lambda: mk.sample_scores(logits, target, kind="logprob", mask=mask, backend=name), torch_ms)
            argmax_ms = run("correct", "torch argmax alone", lambda: logits.argmax(-1))
            torch_ms = run("correct", "torch", lambda: torch_correct(logits, target, mask), argmax_ms=argmax_ms)
            for name in backends(device):
                run(
                    "correct", name, lambda: mk.sample_scores(logits, target, kind="correct", mask=mask, backend=name),
                    torch_ms, argmax_ms,
                )
            del logits, target, mask
    out.close()


if __name__ == "__main__":
    main()
