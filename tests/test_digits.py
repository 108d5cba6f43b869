"""The digits task (python/m2n2/tasks/digits.py) and the generic module evaluator
(python/m2n2/models.py)."""
import pytest
import torch

import m2n2
from m2n2 import EvolveConfig, Evolution
from m2n2.tasks import digits, get_task


@pytest.fixture(scope="module")
def data():
    return digits.load_data()


def test_data_split_and_layout(data):
    x_train, y_train, x_test, y_test = data
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert float(x_train.min()) == 0 and float(x_train.max()) == 16, "raw pixel values, unscaled"
    assert digits.N_PARAMS == 19210
    p = torch.arange(digits.N_PARAMS, dtype=torch.float32)
    w1, b1, w2, b2 = digits.unpack(p)
    assert w1.shape == (64, 256) and w1[0, 1] == 1 and w1[1, 0] == 256  # W1 [64 x 256], row-major
    assert b1[0] == 64 * 256 and w2.shape == (256, 10) and b2[-1] == 19209


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3])
def test_scorer_matches_the_plain_forward(data, dtype, k):
    x_train, y_train, _, _ = data
    g = torch.Generator().manual_seed(k)
    params = (torch.randn(k, digits.N_PARAMS, generator=g) * 0.05).to(dtype)
    scorer = digits.MLPScorer(x_train, y_train)
    got = scorer(params)
    assert got.dtype == torch.bool and got.shape == (k, 1437)
    for i in range(k):
        logits = digits.logits_reference(params[i], x_train)
        torch.testing.assert_close(scorer.logits(params)[i], logits, rtol=1e-4, atol=1e-4)
        expect = logits.argmax(-1) == y_train
        # the bias rides in the product (another summation order): allow the odd near-tie
        assert (got[i] != expect).sum() <= 2


def test_module_evaluator_matches_the_task_scorer(data):
    """Any nn.Module: a module holding the reference layout gives the same scores
    through functional_call + vmap as the task's own scorer."""
    x_train, y_train, _, _ = data

    class RefMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.zeros(64, 256))
            self.b1 = torch.nn.Parameter(torch.zeros(256))
            self.w2 = torch.nn.Parameter(torch.zeros(256, 10))
            self.b2 = torch.nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2

    module = RefMLP()
    g = torch.Generator().manual_seed(0)
    params = torch.randn(3, digits.N_PARAMS, generator=g) * 0.05
    ev = m2n2.ModuleEvaluator(module, x_train, y_train, batch_size=500)
    assert ev.n == digits.N_PARAMS and ev.d == 1437 and ev.score_dtype == torch.bool
    got = ev(params)
    loop = m2n2.ModuleEvaluator(module, x_train, y_train, vmap=False)(params)
    assert torch.equal(got, loop)
    for i in range(3):
        expect = digits.logits_reference(params[i], x_train).argmax(-1) == y_train
        assert (got[i] != expect).sum() <= 2
    # flatten / load_flat round trip
    m2n2.load_flat(module, params[1])
    assert torch.equal(m2n2.flatten(module), params[1])


def test_module_evaluator_kinds_and_errors():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    flat = torch.stack([m2n2.flatten(net), m2n2.flatten(net) * 0.5])
    prob = m2n2.ModuleEvaluator(net, x, y, kind="prob")(flat)
    assert prob.dtype == torch.float32 and ((prob >= 0) & (prob <= 1)).all()
    torch.testing.assert_close(prob[0], torch.softmax(net(x), -1).gather(1, y[:, None])[:, 0])
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    assert torch.equal(m2n2.ModuleEvaluator(net, batches)(flat), m2n2.ModuleEvaluator(net, x, y)(flat))
    with pytest.raises(ValueError, match="use kind='prob'"):
        m2n2.ModuleEvaluator(net, x, y, kind="logprob")
    with pytest.raises(ValueError, match="targets must be given"):
        m2n2.ModuleEvaluator(net, x)
    with pytest.raises(ValueError, match=r"params must be \[K, 66\]"):
        m2n2.ModuleEvaluator(net, x, y)(torch.zeros(2, 65))


def test_specialists_know_their_half(data):
    x_train, y_train, _, _ = data
    models = digits.pretrained_specialists()
    scorer = digits.MLPScorer(x_train, y_train)
    right = scorer(models)
    low = y_train < 5
    assert right[0][low].float().mean() > 0.8 and right[0][~low].float().mean() < 0.05
    assert right[1][~low].float().mean() > 0.8 and right[1][low].float().mean() < 0.05
    assert torch.equal(models, digits.pretrained_specialists()), "the same pair every time"


def test_short_run_beats_random_search_of_the_same_budget():
    passes = 1500
    task = get_task("digits")
    cfg = EvolveConfig(forward_passes=passes, mutation_std=0.01, seed=0)
    evo = Evolution(task.evaluate, task.init, cfg, test=task.test)
    result = evo.run()
    # random search: as many N(0, 0.01^2) models, the best on train reported on test
    g = torch.Generator().manual_seed(0)
    best_train, best_test = -1.0, None
    for start in range(0, passes, 100):
        models = torch.randn(100, digits.N_PARAMS, generator=g) * digits.INIT_STD
        train = task.evaluate.accuracy(models)
        i = int(train.argmax())
        if float(train[i]) > best_train:
            best_train, best_test = float(train[i]), float(task.test(models[i : i + 1])[0])
    assert result["train_accuracy"] > best_train + 0.1
    assert result["test_accuracy"] > best_test + 0.1
    assert result["curve"]["forward_passes"][-1] == passes


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'mnist'; known tasks: digits"):
        get_task("mnist")
