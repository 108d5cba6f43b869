"""The paper's reference experiment: evolving 8x8 digit classifiers
(docs/semantics.md, "The digits experiment").

sklearn's `load_digits` (raw pixel values 0..16), the first 80% for training (1437
images) and the last 20% for testing (360). An MLP 64 -> 256 (ReLU) -> 10 whose
19,210 parameters are one flat vector laid out as the reference code lays it out:
W1 [64 x 256] row-major, b1 [256], W2 [256 x 10], b2 [10]. A model's score on a
training image is 1 when argmax(logits) equals the label.

Because b1 follows W1 and b2 follows W2, the slices [W1; b1] and [W2; b2] of the
flat vector are already the weight matrices of the two layers with their bias as
an extra input row: each layer is one matrix product against inputs that carry a
constant-1 column, read straight from the archive row without a copy.
"""
import functools

import torch

N_IN, N_HIDDEN, N_OUT = 64, 256, 10
LAYER1 = (N_IN + 1) * N_HIDDEN  # [W1; b1]
N_PARAMS = LAYER1 + (N_HIDDEN + 1) * N_OUT  # 19,210
TRAIN_FRACTION = 0.8
INIT_STD = 0.01
SPECIALIST_SEED = 42  # the two pre-trained specialists are the same for every run, as in the reference
SPECIALIST_LR = 0.003
SPECIALIST_STEPS = 10


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the digits task needs scikit-learn (it ships the data set): pip install 'm2n2-kernels[digits]'"
        ) from e
    return load_digits(return_X_y=True)


@functools.lru_cache(maxsize=None)
def _load_cpu():
    images, labels = _sklearn_digits()
    cut = int(len(images) * TRAIN_FRACTION)
    x = torch.tensor(images, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.int64)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def load_data(device="cpu"):
    """(x_train [1437, 64], y_train, x_test [360, 64], y_test) on `device`."""
    return tuple(t.to(device) for t in _load_cpu())


def unpack(params):
    """(W1 [64, 256], b1, W2 [256, 10], b2): views of one flat parameter vector."""
    w1 = params[: N_IN * N_HIDDEN].view(N_IN, N_HIDDEN)
    b1 = params[N_IN * N_HIDDEN : LAYER1]
    w2 = params[LAYER1 : LAYER1 + N_HIDDEN * N_OUT].view(N_HIDDEN, N_OUT)
    b2 = params[LAYER1 + N_HIDDEN * N_OUT :]
    return w1, b1, w2, b2


def logits_reference(params, x):
    """The plain forward pass of one flat vector (the definition; tests compare with it)."""
    w1, b1, w2, b2 = unpack(params.float())
    return torch.relu(x @ w1 + b1) @ w2 + b2


class MLPScorer:
    """Right/wrong scores of K flat parameter vectors on fixed images.

    The children are run one after another through buffers that are reused across
    calls, so that a child's hidden activations (D x 256 floats) stay in cache
    between the two layers; every product is one BLAS call on 2-D operands.
    """

    def __init__(self, x, y):
        if x.dim() != 2 or x.shape[1] != N_IN:
            raise ValueError(f"x must be [D, {N_IN}], got {tuple(x.shape)}")
        self.x1 = torch.cat([x.float(), torch.ones(x.shape[0], 1, dtype=torch.float32, device=x.device)], 1)
        self.y = y
        self.d = x.shape[0]
        self.hidden = torch.empty(self.d, N_HIDDEN, dtype=torch.float32, device=x.device)
        self._logits = torch.empty(0, self.d, N_OUT, dtype=torch.float32, device=x.device)
        self._scores = torch.empty(0, self.d, dtype=torch.bool, device=x.device)
        self._views = (None, None)  # (key of the params block, its per-model layer views)

    def _layers(self, params):
        """Per model: ([W1; b1] [65, 256], W2 [256, 10], b2 [10]) as views of params
        (float32) or of a float32 copy. The engine passes the same child slots every
        step, so the views are made once per buffer."""
        key = None
        if params.dtype != torch.float32:
            params = params.float()  # a fresh copy: its views cannot be kept
        else:
            key = (params.data_ptr(), tuple(params.shape), tuple(params.stride()))
            if self._views[0] == key:
                return self._views[1]
        views = [
            (
                p[:LAYER1].view(N_IN + 1, N_HIDDEN),
                p[LAYER1 : LAYER1 + N_HIDDEN * N_OUT].view(N_HIDDEN, N_OUT),
                p[LAYER1 + N_HIDDEN * N_OUT :],
            )
            for p in params
        ]
        if key is not None:
            self._views = (key, views)
        return views

    def logits(self, params):
        """float32 [K, D, 10]; a view of an internal buffer, valid until the next call."""
        k = params.shape[0]
        if self._logits.shape[0] < k:
            self._logits = torch.empty(k, self.d, N_OUT, dtype=torch.float32, device=self.x1.device)
            self._scores = torch.empty(k, self.d, dtype=torch.bool, device=self.x1.device)
        out = self._logits[:k]
        with torch.no_grad():
            for i, (w1b1, w2, b2) in enumerate(self._layers(params)):
                torch.mm(self.x1, w1b1, out=self.hidden)
                self.hidden.relu_()
                torch.addmm(b2, self.hidden, w2, out=out[i])
        return out

    def __call__(self, params):
        """bool [K, D]: argmax(logits) == label (torch.argmax's tie rule). A view of an
        internal buffer, valid until the next call."""
        logits = self.logits(params)
        return torch.eq(logits.argmax(-1), self.y, out=self._scores[: params.shape[0]])

    def accuracy(self, params):
        """float64 [K]: the fraction of images each model classifies right."""
        return self(params).sum(1, dtype=torch.float64) / self.d


def init_from_scratch(generator, n_models=2):
    """Models of N(0, 0.01^2) parameters drawn from the run's generator."""
    return torch.randn(n_models, N_PARAMS, generator=generator, device=generator.device) * INIT_STD


def train_specialist(params, x, y, *, lr=SPECIALIST_LR, steps=SPECIALIST_STEPS):
    """Adam on the mean cross-entropy, full batch, as the reference pre-trains."""
    p = params.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_reference(p, x), y)
        loss.backward()
        opt.step()
    return p.detach()


@functools.lru_cache(maxsize=None)
def _specialists_cpu():
    x, y, _, _ = _load_cpu()
    g = torch.Generator().manual_seed(SPECIALIST_SEED)
    start = torch.randn(2, N_PARAMS, generator=g) * INIT_STD
    low = y < 5
    return torch.stack(
        [train_specialist(start[0], x[low], y[low]), train_specialist(start[1], x[~low], y[~low])]
    )


def pretrained_specialists(device="cpu"):
    """Two models trained on digits 0-4 and 5-9 of the training set (Adam, lr 0.003,
    10 full-batch steps from N(0, 0.01^2)); the same pair for every run."""
    return _specialists_cpu().to(device)


class DigitsTask:
    """The digits experiment, from scratch or from two pre-trained specialists."""

    name = "digits"
    n = N_PARAMS

    def __init__(self, device="cpu", pretrained=False):
        self.device = torch.device(device)
        self.pretrained = bool(pretrained)
        x_train, y_train, x_test, y_test = load_data(self.device)
        self.evaluate = MLPScorer(x_train, y_train)
        self._test = MLPScorer(x_test, y_test)
        self.d = x_train.shape[0]
        self.odd_mask = y_train % 2 == 1  # MAP-Elites' descriptors: accuracy on odd and on even digits

    def test(self, params):
        return self._test.accuracy(params)

    def init(self, generator):
        if self.pretrained:
            return pretrained_specialists(self.device)
        return init_from_scratch(generator)

    @property
    def defaults(self):
        """The reference experiment's settings for this start."""
        if self.pretrained:
            return {"forward_passes": 10_000, "mutation_std": 0.0}
        return {"forward_passes": 50_000, "mutation_std": 0.01}

    def describe(self):
        return {"task": self.name, "pretrained": self.pretrained}
