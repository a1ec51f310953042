"""Batch norm, dropout and the book's weight decay, against float64 NumPy transcriptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import gradcheck, losses, nn


def np_batchnorm_train(x, gamma, beta, running_mean, running_var, momentum=0.9, eps=10e-7):
    """The book's BatchNormalization.__forward in training mode."""
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc**2, axis=0)
    std = np.sqrt(var + eps)
    xn = xc / std
    running_mean = momentum * running_mean + (1 - momentum) * mu
    running_var = momentum * running_var + (1 - momentum) * var
    return gamma * xn + beta, running_mean, running_var


def np_batchnorm_eval(x, gamma, beta, running_mean, running_var, eps=10e-7):
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta


def test_batchnorm_train_and_eval_match_the_book(key, x64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)) * 3 + 1
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    rm, rv = rng.standard_normal(5), rng.random(5) + 0.5
    y, new = nn.batch_norm(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta),
                           {"mean": jnp.asarray(rm), "var": jnp.asarray(rv)}, train=True)
    y_ref, rm_ref, rv_ref = np_batchnorm_train(x, gamma, beta, rm, rv)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(new["mean"], rm_ref, rtol=1e-12)
    np.testing.assert_allclose(new["var"], rv_ref, rtol=1e-12)
    y_eval, same = nn.batch_norm(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), new, train=False)
    np.testing.assert_allclose(y_eval, np_batchnorm_eval(x, gamma, beta, rm_ref, rv_ref), rtol=1e-12)
    assert same is new  # evaluation leaves the running statistics alone


def test_batchnorm_training_output_is_normalised(key):
    params = nn.init_mlp(key, (10, 32, 3), batchnorm=True, weight_init=5.0)
    x = 10 * jax.random.normal(key, (64, 10))
    h = x @ params[0]["w"] + params[0]["b"].reshape(1, -1)
    y, _ = nn.batch_norm(h, params[0]["gamma"], params[0]["beta"], nn.init_bn_state(params)[0], train=True)
    np.testing.assert_allclose(jnp.mean(y, axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=0), 1, atol=1e-3)


def test_apply_with_batchnorm_updates_state_only_in_training(key):
    params = nn.init_mlp(key, (6, 8, 8, 3), batchnorm=True)
    assert [sorted(p) for p in params] == [["b", "beta", "gamma", "w"]] * 2 + [["b", "w"]]
    state = nn.init_bn_state(params)
    x = jax.random.normal(key, (20, 6))
    _, trained = nn.apply(params, x, state=state, train=True)
    assert float(jnp.abs(trained[0]["mean"]).sum()) > 0 and trained[-1] is None
    logits, after_eval = nn.apply(params, x, state=trained, train=False)
    assert logits.shape == (20, 3)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(after_eval), jax.tree.leaves(trained)))
    # evaluation of one example does not depend on the rest of the batch
    one, _ = nn.apply(params, x[:1], state=trained)
    np.testing.assert_allclose(one[0], logits[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch-norm"):
        nn.mlp(params, x)
    with pytest.raises(ValueError, match="init_bn_state"):
        nn.apply(params, x)


def test_gradient_check_through_batchnorm(key, x64):
    """Backprop through batch norm (the book's hardest layer) against numerical gradients."""
    params = nn.init_mlp(key, (5, 6, 3), batchnorm=True, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.fold_in(key, 9), p.shape, p.dtype), params)
    state = nn.init_bn_state(params)
    x = jax.random.normal(jax.random.fold_in(key, 1), (4, 5), jnp.float64)  # batch >= 2: var > 0
    y = jnp.array([0, 1, 2, 1])

    def loss(p):
        logits, _ = nn.apply(p, x, state=state, train=True, activation="tanh")
        return losses.softmax_cross_entropy(logits, y)

    checks = gradcheck.gradient_check(loss, params)
    assert {c.path.split("'")[-2] for c in checks} >= {"gamma", "beta", "w", "b"}
    # the first layer's bias cancels exactly in batch norm: both gradients are ~0
    for c in checks:
        assert c.rel < 1e-6 or c.max_abs < 1e-9, c


def test_dropout_statistics_and_determinism(key):
    x = jnp.ones((200, 500))
    for rate in (0.2, 0.5):
        inv = nn.dropout(x, rate, key=key, train=True)
        kept = float(jnp.mean(inv != 0))
        # 100,000 Bernoulli draws: the kept fraction is within 1% of 1 - rate with overwhelming odds
        assert kept == pytest.approx(1 - rate, abs=0.01)
        np.testing.assert_allclose(jnp.unique(inv), [0, 1 / (1 - rate)], rtol=1e-6)
        assert float(jnp.mean(inv)) == pytest.approx(1.0, abs=0.02)  # inverted: the mean is kept in training
        book = nn.dropout(x, rate, key=key, train=True, mode="textbook")
        assert jnp.array_equal(book != 0, inv != 0)  # same mask for the same key
        np.testing.assert_allclose(jnp.unique(book), [0, 1])
        # at test time: identity (inverted) or scaled by 1 - rate (the book's)
        assert jnp.array_equal(nn.dropout(x, rate, train=False), x)
        np.testing.assert_allclose(nn.dropout(x, rate, train=False, mode="textbook"), (1 - rate) * x, rtol=1e-6)
    assert jnp.array_equal(nn.dropout(x, 0.5, key=key, train=True), nn.dropout(x, 0.5, key=key, train=True))
    assert not jnp.array_equal(nn.dropout(x, 0.5, key=key, train=True),
                               nn.dropout(x, 0.5, key=jax.random.fold_in(key, 1), train=True))


def test_dropout_rate_may_be_traced(key):
    x = jnp.ones((100, 100))
    kept = jax.jit(jax.vmap(lambda r: jnp.mean(nn.dropout(x, r, key=key, train=True, mode="textbook"))))(
        jnp.array([0.1, 0.5, 0.9]))
    np.testing.assert_allclose(kept, [0.9, 0.5, 0.1], atol=0.02)


@pytest.mark.parametrize("call, match", [
    (lambda x, k: nn.dropout(x, 1.0, key=k, train=True), r"drop_rate \(probability of dropping\) must be in \[0, 1\); got 1.0"),
    (lambda x, k: nn.dropout(x, 0.5, train=True), "needs a PRNG key"),
    (lambda x, k: nn.dropout(x, 0.5, key=k, train=True, mode="keep"), r"dropout mode must be one of \['inverted', 'textbook'\]"),
])
def test_dropout_bad_arguments(key, call, match):
    with pytest.raises(ValueError, match=match):
        call(jnp.ones((2, 2)), key)


def test_weight_decay_gradient_is_the_books(key, x64):
    """d/dW [loss + 0.5*lambda*sum(W**2)] = dW + lambda*W on weights; biases, gamma, beta untouched."""
    params = nn.init_mlp(key, (4, 5, 5, 3), batchnorm=True, dtype=jnp.float64)
    state = nn.init_bn_state(params)
    x = jax.random.normal(key, (8, 4), jnp.float64)
    y = jnp.arange(8) % 3
    lam = 0.1

    def data_loss(p):
        return losses.softmax_cross_entropy(nn.apply(p, x, state=state, train=True)[0], y)

    plain = jax.grad(data_loss)(params)
    decayed = jax.grad(lambda p: data_loss(p) + losses.l2_penalty(p, lam))(params)
    for layer, g0, g1 in zip(params, plain, decayed):
        np.testing.assert_allclose(g1["w"], g0["w"] + lam * layer["w"], rtol=1e-12, atol=1e-15)
        for name in set(layer) - {"w"}:
            np.testing.assert_array_equal(g1[name], g0[name])
