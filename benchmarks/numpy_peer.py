"""The textbook's approach in NumPy, the benchmark's "NumPy peer" (never imports JAX).

A transcription of *Deep Learning from Scratch*'s ``common/layers.py`` (Affine, Relu,
BatchNormalization, SoftmaxWithLoss), ``common/multi_layer_net_extend.py`` (Affine -> [BatchNorm]
-> ReLU, L2 weight decay on the weights) and ``common/optimizer.py`` (SGD, Momentum, AdaGrad, Adam
with eps 1e-7 outside the root and the bias correction folded into ``lr_t``). Changes, so that it
does the same work as jaxscratch, no less and no more: float32 (the book's arrays are float64);
``gradient`` returns the loss of the forward pass it differentiates (the book's scripts call
``loss`` once more per step); the weight-decay term only when ``weight_decay > 0``; Relu multiplies
by a 0/1 mask; the first layer's input gradient, which feeds nothing, is not computed. Initial
weights, hyperparameters and mini-batch indices come from the caller.
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
        return dout @ self.W.T if need_dx else None     # (batch, n_in); the first layer's feeds nothing


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
        self.params, self.layers, self.affines, self.bns = {}, [], [], {}
        for i, layer in enumerate(params):
            for name in ("w", "b", "gamma", "beta"):  # the book's order: W, b, then batch norm's
                if name in layer:
                    self.params[f"{'W' if name == 'w' else name}{i}"] = np.array(layer[name], dtype)
            self.affines.append(Affine(self.params[f"W{i}"], self.params[f"b{i}"]))
            self.layers.append(self.affines[-1])
            if i == len(params) - 1:
                break
            if "gamma" in layer:
                self.bns[i] = BatchNormalization(self.params[f"gamma{i}"], self.params[f"beta{i}"])
                self.layers.append(self.bns[i])
            self.layers.append(Relu())
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        for layer in self.layers:
            x = layer.forward(x, train_flg) if isinstance(layer, BatchNormalization) else layer.forward(x)
        return x

    def loss(self, x, t, train_flg=False):
        loss = self.last_layer.forward(self.predict(x, train_flg), t)
        if self.weight_decay > 0:
            wd = sum(float(np.sum(a.W ** 2)) for a in self.affines)
            loss += 0.5 * self.weight_decay * wd
        return loss

    def gradient(self, x, t):
        """``(loss, grads)``: forward in training mode, then backward through every layer."""
        loss = self.loss(x, t, train_flg=True)
        dout = self.last_layer.backward()
        for layer in reversed(self.layers[1:]):
            dout = layer.backward(dout)
        self.layers[0].backward(dout, need_dx=False)
        grads, wd = {}, self.params["W0"].dtype.type(self.weight_decay)
        for i, a in enumerate(self.affines):
            grads[f"W{i}"], grads[f"b{i}"] = a.dW + wd * a.W if self.weight_decay > 0 else a.dW, a.db
        for i, bn in self.bns.items():
            grads[f"gamma{i}"], grads[f"beta{i}"] = bn.dgamma, bn.dbeta
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
