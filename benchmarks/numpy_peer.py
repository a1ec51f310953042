"""The textbook's approach in NumPy: layers with hand-written forward/backward, the book's optimizers.

A transcription of *Deep Learning from Scratch*'s ``common/layers.py`` (Affine, Relu,
BatchNormalization, SoftmaxWithLoss), ``common/multi_layer_net_extend.py`` (Affine -> [BatchNorm]
-> ReLU per hidden layer, L2 weight decay on the weights) and ``common/optimizer.py`` (SGD,
Momentum, AdaGrad, Adam; eps 1e-7 outside the square root, Adam's bias correction folded into
``lr_t``), used by the benchmark as the "NumPy peer". This module never imports JAX.

Choices, so that the NumPy peer does the same work as jaxscratch, and not less or more:
  * float32 everywhere (the book's arrays are float64; float32 halves the memory traffic and is
    what the JAX implementations compute in, so the FLOP rates compare like with like).
  * ``gradient`` returns the loss of the forward pass it backpropagates through. The book's
    comparison scripts call ``network.loss(x, t)`` once more after each update to record the loss,
    a third more work than jaxscratch does; we do not.
  * The weight-decay term is computed only when ``weight_decay > 0`` (the book always sums it).
  * Relu multiplies by a 0/1 mask instead of the book's boolean-mask assignment (the same
    arithmetic, faster in NumPy), and the first layer's input gradient, which feeds nothing, is
    not computed (JAX does not compute it either). Nothing else is changed.
  * Initial weights, hyperparameters and mini-batch indices come from the caller, so every peer
    starts from the same weights and sees the same batches.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


# ----------------------------------------------------------------- layers (common/layers.py)
class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b                      # (batch, n_out)

    def backward(self, dout, need_dx=True):
        self.dW = self.x.T @ dout                       # (n_in, n_out)
        self.db = dout.sum(axis=0)
        # The book always computes dx; the first layer's dx feeds nothing, and JAX (which
        # differentiates only what is needed) skips it, so we skip it too.
        return dout @ self.W.T if need_dx else None     # (batch, n_in)


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = (x > 0).astype(x.dtype)
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class BatchNormalization:
    """The book's batch norm: biased batch variance, eps 10e-7, running averages with momentum 0.9."""

    def __init__(self, gamma, beta, momentum=0.9):
        self.gamma, self.beta, self.momentum = gamma, beta, momentum
        self.running_mean = np.zeros_like(gamma)
        self.running_var = np.zeros_like(gamma)
        self.batch_size = self.xc = self.std = self.xn = self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc ** 2, axis=0)
            std = np.sqrt(var + F32(10e-7))
            xn = xc / std
            self.batch_size, self.xc, self.xn, self.std = x.shape[0], xc, xn, std
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        else:
            xn = (x - self.running_mean) / np.sqrt(self.running_var + F32(10e-7))
        return self.gamma * xn + self.beta

    def backward(self, dout):
        dbeta = dout.sum(axis=0)
        dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        dx = dxc - dmu / self.batch_size
        self.dgamma, self.dbeta = dgamma, dbeta
        return dx


class SoftmaxWithLoss:
    def __init__(self):
        self.y = self.t = None

    def forward(self, x, t):
        x = x - x.max(axis=1, keepdims=True)
        y = np.exp(x)
        y /= y.sum(axis=1, keepdims=True)
        self.y, self.t = y, t
        n = x.shape[0]
        return -np.sum(np.log(y[np.arange(n), t] + F32(1e-7))) / n   # the book's 1e-7 inside the log

    def backward(self):
        n = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx / F32(n)


# ----------------------------------------------------------------- network (MultiLayerNetExtend)
class MultiLayerNet:
    """Affine -> [BatchNorm] -> ReLU per hidden layer, then Affine -> softmax.

    ``params`` is a list of dicts ``{"w", "b"[, "gamma", "beta"]}`` (jaxscratch's layout),
    copied to ``dtype`` (float32; float64 is the book's, for reference); the arrays are updated
    in place by the optimizers, as in the book.
    """

    def __init__(self, params, weight_decay=0.0, dtype=F32):
        self.weight_decay = float(weight_decay)
        self.params = {}
        self.layers = []
        last = len(params) - 1
        for i, layer in enumerate(params):
            self.params[f"W{i}"] = np.array(layer["w"], dtype)
            self.params[f"b{i}"] = np.array(layer["b"], dtype)
            self.layers.append(Affine(self.params[f"W{i}"], self.params[f"b{i}"]))
            if i == last:
                break
            if "gamma" in layer:
                self.params[f"gamma{i}"] = np.array(layer["gamma"], dtype)
                self.params[f"beta{i}"] = np.array(layer["beta"], dtype)
                self.layers.append(BatchNormalization(self.params[f"gamma{i}"], self.params[f"beta{i}"]))
            self.layers.append(Relu())
        self.last_layer = SoftmaxWithLoss()
        self.n_affine = len(params)

    def predict(self, x, train_flg=False):
        for layer in self.layers:
            x = layer.forward(x, train_flg) if isinstance(layer, BatchNormalization) else layer.forward(x)
        return x

    def loss(self, x, t, train_flg=False):
        loss = self.last_layer.forward(self.predict(x, train_flg), t)
        if self.weight_decay > 0:
            wd = sum(float(np.sum(self.params[f"W{i}"] ** 2)) for i in range(self.n_affine))
            loss += 0.5 * self.weight_decay * wd
        return loss

    def gradient(self, x, t):
        """``(loss, grads)``: forward in training mode, then backward through every layer."""
        loss = self.loss(x, t, train_flg=True)
        dout = self.last_layer.backward()
        for j, layer in enumerate(reversed(self.layers)):
            dout = layer.backward(dout, need_dx=j < len(self.layers) - 1) if isinstance(layer, Affine) \
                else layer.backward(dout)
        grads = {}
        wd = self.params["W0"].dtype.type(self.weight_decay)
        for i, layer in enumerate(l for l in self.layers if isinstance(l, Affine)):
            grads[f"W{i}"] = layer.dW + wd * layer.W if self.weight_decay > 0 else layer.dW
            grads[f"b{i}"] = layer.db
        for i, layer in enumerate(self.layers):
            if isinstance(layer, BatchNormalization):
                k = sum(isinstance(l, Affine) for l in self.layers[:i]) - 1
                grads[f"gamma{k}"], grads[f"beta{k}"] = layer.dgamma, layer.dbeta
        return loss, grads

    def accuracy(self, x, t, chunk=10000):
        hits = 0
        for s in range(0, len(x), chunk):  # bounded memory on 60,000 rows, like jaxscratch's evaluate
            hits += int(np.sum(np.argmax(self.predict(x[s:s + chunk]), axis=1) == t[s:s + chunk]))
        return hits / len(x)


# ----------------------------------------------------------------- optimizers (common/optimizer.py)
class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params:
            params[key] -= F32(self.lr) * grads[key]


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params:
            self.v[key] = F32(self.momentum) * self.v[key] - F32(self.lr) * grads[key]
            params[key] += self.v[key]


class AdaGrad:
    def __init__(self, lr=0.01):
        self.lr, self.h = lr, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params:
            self.h[key] += grads[key] * grads[key]
            params[key] -= F32(self.lr) * grads[key] / (np.sqrt(self.h[key]) + F32(1e-7))


class Adam:
    """The book's Adam: ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``, eps 1e-7 outside the sqrt."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr, self.beta1, self.beta2, self.iter, self.m, self.v = lr, beta1, beta2, 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = {k: np.zeros_like(v) for k, v in params.items()}
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.iter += 1
        lr_t = F32(self.lr * np.sqrt(1.0 - self.beta2 ** self.iter) / (1.0 - self.beta1 ** self.iter))
        for key in params:
            self.m[key] += F32(1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += F32(1 - self.beta2) * (grads[key] ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + F32(1e-7))


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adagrad": AdaGrad, "adam": Adam}


# ----------------------------------------------------------------- workloads
def run_steps(net, optimizer, x, y, batches):
    """Train on ``batches`` ``(steps, batch)`` of row indices; returns the per-step losses."""
    losses = np.empty(len(batches), F32)
    for i, idx in enumerate(batches):
        loss, grads = net.gradient(x[idx], y[idx])
        optimizer.update(net.params, grads)
        losses[i] = loss
    return losses


def compare_optimizers(params, x, y, batches, names):
    """The book's optimizer comparison: name -> per-step losses, each from ``params``, same batches."""
    return {name: run_steps(MultiLayerNet(params), OPTIMIZERS[name](), x, y, batches) for name in names}


def train_epochs(net, optimizer, x, y, epoch_batches, evals):
    """The book's ``Trainer``: the steps of each epoch, then the accuracy on every set in ``evals``.

    ``epoch_batches``: ``(epochs, steps, batch)``. Returns name -> accuracies per epoch.
    """
    history = {name: [] for name in evals}
    for batches in epoch_batches:
        run_steps(net, optimizer, x, y, batches)
        for name, (xe, ye) in evals.items():
            history[name].append(net.accuracy(xe, ye))
    return {k: np.asarray(v) for k, v in history.items()}


def search(inits, lrs, wds, x, y, xv, yv, batches, epochs=None, trials=None):
    """The book's serial random search: one network per trial, SGD, per-epoch train and val accuracy.

    ``inits``: trial -> params; ``batches``: ``(T, epochs, steps, batch)``. Returns ``val_acc`` and
    ``train_acc`` arrays ``(T, epochs)``.
    """
    trials = range(len(lrs)) if trials is None else trials
    val, tr = [], []
    for i in trials:
        net = MultiLayerNet(inits(i), weight_decay=wds[i])
        h = train_epochs(net, SGD(lrs[i]), x, y, batches[i][:epochs], {"train": (x, y), "val": (xv, yv)})
        val.append(h["val"])
        tr.append(h["train"])
    return np.asarray(val), np.asarray(tr)


def successive_halving(inits, lrs, wds, x, y, xv, yv, batches, *, max_epochs, min_epochs, eta):
    """Serial successive halving with jaxscratch's rung schedule (budget ``min_epochs * eta**i``,
    keep the best ``ceil(T / eta)`` by validation accuracy, ties to the lower trial index)."""
    alive = list(range(len(lrs)))
    nets = {i: MultiLayerNet(inits(i), weight_decay=wds[i]) for i in alive}
    opts = {i: SGD(lrs[i]) for i in alive}
    val = {i: [] for i in alive}
    done, budget, epochs_trained, rungs = 0, min_epochs, 0, []
    while True:
        budget = min(budget, max_epochs)
        for i in alive:
            h = train_epochs(nets[i], opts[i], x, y, batches[i][done:budget], {"train": (x, y), "val": (xv, yv)})
            val[i].extend(h["val"].tolist())
        epochs_trained += (budget - done) * len(alive)
        rungs.append((budget, len(alive)))
        done = budget
        if budget >= max_epochs or len(alive) == 1:
            break
        keep = -(-len(alive) // eta)
        order = sorted(range(len(alive)), key=lambda j: -val[alive[j]][-1])[:keep]  # stable: ties keep order
        alive = [alive[j] for j in order]
        budget *= eta
    best = max(alive, key=lambda i: (val[i][-1], -alive.index(i)))
    return best, val[best][-1], epochs_trained, rungs


def batchnorm_grid(inits, x, y, batches, lr):
    """Each initial weight scale trained once with ``params`` as given (BN or plain), serially.

    ``inits``: scale -> params; ``batches``: ``(S, epochs, steps, batch)``. Returns the train
    accuracy ``(S, epochs)``.
    """
    return np.asarray([train_epochs(MultiLayerNet(inits(i)), SGD(lr), x, y, batches[i], {"train": (x, y)})["train"]
                       for i in range(len(batches))])
