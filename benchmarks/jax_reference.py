"""The public reference loop of M2N2's digits experiment, transcribed to JAX, as the
speed baseline of bench_engine.py (jax is an optional benchmark dependency).

Two forms of the same algorithm (sample parents by fitness and attraction, slerp
with a split point, mutate, score on the training images, replace, then score the
best-train member on the test images after every pass, as the reference logs):
- `ReferenceLoop`: structured as the reference code is: parent sampling in eager
  JAX, crossover, mutation, the forward pass and the archive update as separate
  jit-compiled functions, the test evaluation after each pass;
- `FusedLoop`: the whole pass as one jit-compiled function (the fastest way to
  write it in JAX), for a stricter comparison.
Written from the algorithm's description; it shares no code with the reference.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

N_IN, N_HIDDEN, N_OUT = 64, 256, 10
N_PARAMS = (N_IN + 1) * N_HIDDEN + (N_HIDDEN + 1) * N_OUT


def _data():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    cut = int(len(x) * 0.8)
    return (jnp.asarray(x[:cut], jnp.float32), jnp.asarray(y[:cut]), jnp.asarray(x[cut:], jnp.float32),
            jnp.asarray(y[cut:]))


def _forward(p, x):
    o = N_IN * N_HIDDEN
    w1, b1 = p[:o].reshape(N_IN, N_HIDDEN), p[o : o + N_HIDDEN]
    o += N_HIDDEN
    w2, b2 = p[o : o + N_HIDDEN * N_OUT].reshape(N_HIDDEN, N_OUT), p[o + N_HIDDEN * N_OUT :]
    return jnp.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def _weights(S, alpha):
    z = S.sum(0)
    return S / (jnp.where(z, z, 1) ** alpha)[None]


def _slerp_split(a, b, split, w):
    t = jnp.where(jnp.arange(a.shape[0]) < split, w, 1.0 - w)
    cos = jnp.dot(a / jnp.linalg.norm(a), b / jnp.linalg.norm(b))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    so = jnp.sin(omega)
    slerp = jnp.sin((1.0 - t) * omega) / so * a + jnp.sin(t * omega) / so * b
    return jnp.where(so > 1e-6, slerp, (1.0 - t) * a + t * b)


def _insert(scores, child, archive, S, alpha):
    ext = jnp.concatenate([S, scores[None]], 0).astype(jnp.float32)
    fit = _weights(ext, alpha).sum(1)
    worst = jnp.argmin(fit)
    keep = worst < S.shape[0]
    archive = archive.at[worst].set(jnp.where(keep, child, archive[worst]))
    return archive, S.at[worst].set(jnp.where(keep, scores, S[worst]))


class _Base:
    def __init__(self, seed=0, archive_size=20, alpha=1.0, sigma=0.01):
        self.x_train, self.y_train, self.x_test, self.y_test = _data()
        self.alpha, self.sigma = alpha, sigma
        key = jax.random.PRNGKey(seed)
        self.key, k1, k2 = jax.random.split(key, 3)
        self.archive = jnp.zeros((archive_size, N_PARAMS))
        self.S = jnp.zeros((archive_size, self.x_train.shape[0]), bool)
        insert = jax.jit(_insert)
        for k in (k1, k2):
            m = jax.random.normal(k, (N_PARAMS,)) * 0.01
            s = jnp.argmax(_forward(m, self.x_train), 1) == self.y_train
            self.archive, self.S = insert(s, m, self.archive, self.S, alpha)
        self.test_accuracy = None

    def run(self, passes):
        """`passes` steps; returns the last test accuracy (waiting for the device:
        the steps themselves are dispatched asynchronously, as in the reference)."""
        for _ in range(passes):
            self.step()
        return float(self.test_accuracy)


class ReferenceLoop(_Base):
    def __init__(self, **kw):
        super().__init__(**kw)
        def cross(a, b, key):
            k1, k2 = jax.random.split(key)
            return _slerp_split(a, b, jax.random.randint(k1, (), 0, N_PARAMS), jax.random.uniform(k2))

        self._cross = jax.jit(cross)
        self._mutate = jax.jit(lambda p, key: p + jax.random.normal(key, p.shape) * self.sigma)
        self._forward = jax.jit(_forward)
        self._insert = jax.jit(_insert)
        self._acc = jax.jit(lambda logits, y: jnp.mean(jnp.argmax(logits, 1) == y))

    def _parents(self, key):  # eager, as the reference samples
        k1, k2 = jax.random.split(key)
        fm = _weights(self.S.astype(jnp.float32), self.alpha)
        fit = fm.sum(1)
        p1 = jax.random.choice(k1, fit.size, shape=(1,), p=fit / fit.sum())[0]
        match = jnp.maximum(0.0, fm - fm[p1]).sum(1)
        p2 = jax.random.choice(k2, match.size, shape=(1,), p=match / match.sum())[0]
        return self.archive[p1], self.archive[p2]

    def step(self):
        k1, k2, k3, self.key = jax.random.split(self.key, 4)
        a, b = self._parents(k1)
        child = self._mutate(self._cross(a, b, k2), k3)
        scores = jnp.argmax(self._forward(child, self.x_train), 1) == self.y_train
        self.archive, self.S = self._insert(scores, child, self.archive, self.S, self.alpha)
        best = jnp.argmax(self.S.mean(1))
        self.test_accuracy = self._acc(self._forward(self.archive[best], self.x_test), self.y_test)


class FusedLoop(_Base):
    def __init__(self, **kw):
        super().__init__(**kw)
        alpha, sigma = self.alpha, self.sigma
        xtr, ytr, xte, yte = self.x_train, self.y_train, self.x_test, self.y_test

        def step(archive, S, key):
            k1, k2, k3, k4, k5, key = jax.random.split(key, 6)
            fm = _weights(S.astype(jnp.float32), alpha)
            fit = fm.sum(1)
            p1 = jax.random.choice(k1, fit.size, p=fit / fit.sum())
            match = jnp.maximum(0.0, fm - fm[p1]).sum(1)
            p2 = jax.random.choice(k2, match.size, p=match / match.sum())
            split = jax.random.randint(k3, (), 0, N_PARAMS)
            child = _slerp_split(archive[p1], archive[p2], split, jax.random.uniform(k4))
            child = child + jax.random.normal(k5, child.shape) * sigma
            scores = jnp.argmax(_forward(child, xtr), 1) == ytr
            archive, S = _insert(scores, child, archive, S, alpha)
            best = jnp.argmax(S.mean(1))
            return archive, S, key, jnp.mean(jnp.argmax(_forward(archive[best], xte), 1) == yte)

        self._step = jax.jit(step)

    def step(self):
        self.archive, self.S, self.key, self.test_accuracy = self._step(self.archive, self.S, self.key)


def _one_seed(args):
    seed, passes, threads = args
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    loop = FusedLoop(seed=seed)
    return seed, loop.run(passes)


def main():
    """Quality of the transcription itself (the final test accuracy of the best-train
    member, per seed), to set beside `m2n2 evolve --compare m2n2` on the same budget."""
    import argparse
    import json
    import multiprocessing
    import statistics

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--passes", type=int, default=50_000)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = [(s, args.passes, 1 if args.jobs > 1 else 2) for s in range(args.seeds)]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = dict(pool.map(_one_seed, work))
    else:
        results = dict(map(_one_seed, work))
    accs = [results[s] for s in sorted(results)]
    mean = statistics.fmean(accs)
    se = statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else 0.0
    print(f"jax fused transcription, {args.seeds} seeds x {args.passes} passes: test accuracy "
          f"{100 * mean:.2f} +- {100 * se:.2f}% ({', '.join(f'{100 * a:.1f}' for a in accs)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": sorted(results), "test_accuracy": accs, "passes": args.passes}, f)


if __name__ == "__main__":
    main()
