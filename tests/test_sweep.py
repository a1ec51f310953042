"""vmapped sweeps: each trial equals training it alone; searches, halving, K-fold CV."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscratch import data, nn, optim, sweep, train

from helpers import COMPILES


@pytest.fixture(scope="module")
def small():
    ds = data.load_digits()
    x, y = ds.x_train[:300], ds.y_train[:300]
    xt, yt, xv, yv = data.train_val_split(x, y, 0.2, seed=0)
    return (xt, yt), (xv, yv), (ds.x_test, ds.y_test)


SPEC = sweep.Spec(sizes=(64, 32, 32, 10), optimizer="momentum", batch_size=40)


def test_each_vmapped_trial_equals_training_it_alone(small):
    tr, va, _ = small
    hp = {"learning_rate": [0.01, 0.05, 0.1], "momentum": [0.5, 0.9, 0.8], "weight_decay": [0.0, 1e-3, 1e-2],
          "drop_rate": [0.0, 0.1, 0.3], "init_scale": [0.05, 0.1, 0.2]}
    key = jax.random.key(7)
    trials = sweep.run_trials(key, SPEC, hp, tr, epochs=3, validation=va, seeds=[4, 5, 6])
    assert trials.history["val_acc"].shape == (3, 3)
    for i, seed in enumerate([4, 5, 6]):
        k = jax.random.fold_in(key, seed)  # fit initialises the model with it, as the sweep does
        model = nn.mlp_model(SPEC.sizes, weight_init=hp["init_scale"][i], drop_rate=hp["drop_rate"][i])
        alone = train.fit(k, model, optim.momentum(hp["learning_rate"][i], hp["momentum"][i]), tr, epochs=3,
                          batch_size=40, validation=va, weight_decay=hp["weight_decay"][i], verbose=False)
        for a, b in zip(jax.tree.leaves(alone.state.params), jax.tree.leaves(trials.state.params)):
            np.testing.assert_allclose(b[i], a, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(trials.history["train_loss"][i], alone.history["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(trials.history["val_acc"][i], alone.history["val_acc"], atol=0.0101)


@pytest.mark.parametrize("sampling", ["epoch", "replacement"])
def test_batch_orders_from_the_host_equal_the_order_program(small, monkeypatch, sampling):
    """train_trials draws the groups' batch orders with NumPy (blocks of epochs); the one-off order
    program (other generators, huge sets) gives the same trials to the bit, and so does a block
    boundary mid-call."""
    tr, va, _ = small
    spec = SPEC._replace(sampling=sampling)
    hp = {"learning_rate": [0.01, 0.05, 0.1], "momentum": [0.5, 0.9, 0.8]}
    run = lambda: sweep.run_trials(jax.random.key(2), spec, hp, tr, epochs=3, validation=va, group_size=2)
    host = run()
    monkeypatch.setattr(sweep._Orders, "MAX_DRAWS", 2 * len(tr[0]) * 2)  # blocks of 2 epochs (2 trials per group)
    blocks = run()
    monkeypatch.setattr(sweep._Orders, "MAX_DRAWS", 0)
    program = run()
    for other in (blocks, program):
        for k in host.history:
            np.testing.assert_array_equal(host.history[k], other.history[k], err_msg=k)
        for a, b in zip(jax.tree.leaves(host.state.params), jax.tree.leaves(other.state.params)):
            np.testing.assert_array_equal(a, b)


def test_seed_only_sweep_and_continuation(small):
    tr, va, _ = small
    key = jax.random.key(0)
    spec = SPEC._replace(optimizer="sgd")
    five = sweep.run_trials(key, spec, {"learning_rate": [0.1] * 4}, tr, epochs=5, validation=va)
    two = sweep.run_trials(key, spec, {"learning_rate": [0.1] * 4}, tr, epochs=2, validation=va)
    three_more = sweep.train_trials(two, spec, tr, epochs=3, validation=va)
    for a, b in zip(jax.tree.leaves(five.state.params), jax.tree.leaves(three_more.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert three_more.history["val_acc"].shape == (4, 5)
    # different seeds, different initial weights, different results
    assert len({round(float(v), 6) for v in five.history["train_loss"][:, 0]}) == 4


def test_groups_give_the_same_trials_and_halving_compiles_one_training_program(small):
    tr, va, _ = small
    spec = SPEC._replace(optimizer="sgd", sizes=(64, 24, 10))
    hp = {"learning_rate": [0.01, 0.03, 0.1, 0.2, 0.05]}
    whole = sweep.run_trials(jax.random.key(3), spec, hp, tr, epochs=2, validation=va, group_size=5)
    grouped = sweep.run_trials(jax.random.key(3), spec, hp, tr, epochs=2, validation=va, group_size=2)  # 2+2+1(+1 pad)
    for k in whole.history:
        np.testing.assert_allclose(grouped.history[k], whole.history[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(grouped.state.params)):
        assert a.shape == b.shape and a.shape[0] == 5
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        sweep.train_trials(whole, spec, tr, epochs=1, group_size=0)
    # every rung (12 -> 4 -> 2 trials, 1/2/4 epochs) reuses one compiled training program
    with COMPILES as compiled:
        sweep.successive_halving(jax.random.key(4), spec, {"learning_rate": (1e-3, 0.3)}, tr, va, n_trials=12,
                                 max_epochs=4, min_epochs=1, eta=3, group_size=4)
    # (this spec's width-4 program is new here: exactly one compilation for three rungs)
    assert sum(1 for name in compiled.names if "_train_one" in name) == 1, compiled.names


def test_random_search_table_and_log_uniform_ranges(small):
    tr, va, _ = small
    trials, rows = sweep.random_search(jax.random.key(1), SPEC._replace(optimizer="sgd"),
                                       {"learning_rate": (1e-4, 1e-1), "weight_decay": (1e-8, 1e-4)},
                                       tr, va, n_trials=12, epochs=3)
    assert len(rows) == 12
    accs = [r["val_acc"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    lrs = np.asarray(trials.hparams["learning_rate"])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1 and np.log10(lrs).std() > 0.3  # spread over decades
    assert rows[0]["learning_rate"] > 1e-3  # tiny learning rates cannot win in 3 epochs


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_log_uniform_draws_are_jax_random_uniform_bit_for_bit(impl):
    """The searches' hyperparameters: ``10 ** uniform(fold_in(fold_in(key, 1), i), log10 low, log10
    high)`` for the i-th name in sorted order, to the bit (threefry: hashed on the host; other
    generators: JAX)."""
    ranges = {"weight_decay": (1e-8, 1e-4), "learning_rate": (1e-6, 1e-2), "a": (0.3, 7.0), "b": (2.0, 3e5),
              "c": (1e-3, 1e-3)}
    for seed in range(3):
        key = jax.random.key(seed, impl=impl)
        got = sweep._log_uniform(key, ranges, 257)
        assert sorted(got) == sorted(ranges)
        for i, name in enumerate(sorted(ranges)):
            lo, hi = (float(np.log10(v)) for v in ranges[name])
            want = 10.0 ** jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, 1), i), (257,), minval=lo,
                                              maxval=hi)
            assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name


def test_successive_halving_saves_compute_and_finds_a_good_trial(small):
    tr, va, _ = small
    spec, ranges = SPEC._replace(optimizer="sgd"), {"learning_rate": (1e-4, 3e-1)}
    full, full_rows = sweep.random_search(jax.random.key(2), spec, ranges, tr, va, n_trials=9, epochs=9)
    halved, rows, summary = sweep.successive_halving(jax.random.key(2), spec, ranges, tr, va, n_trials=9,
                                                     max_epochs=9, min_epochs=1, eta=3)
    assert [r["trials"] for r in summary["rungs"]] == [9, 3, 1]
    assert [r["epochs"] for r in summary["rungs"]] == [1, 3, 9]
    assert summary["epochs_trained"] == 9 * 1 + 3 * 2 + 1 * 6 and summary["fraction_of_full"] < 0.3
    # the same hyperparameters were sampled; the survivor is one of the full search's trials
    assert rows[0]["learning_rate"] in [pytest.approx(r["learning_rate"]) for r in full_rows]
    assert rows[0]["val_acc"] >= full_rows[0]["val_acc"] - 0.1


def test_halving_picks_the_group_size_that_pads_least(small):
    """The rung schedule is known before the first rung: successive halving on a CPU picks the
    widest group whose padding costs at most 5% more than the least; the trials are the same
    whatever the group size."""
    assert sweep._rungs(100, 50, 5, 3) == [(100, 5), (34, 10), (12, 30), (4, 5)]
    assert sweep._rungs(9, 9, 1, 3) == [(9, 1), (3, 2), (1, 6)]
    assert sweep._halving_group_size(sweep._rungs(100, 50, 5, 3), 2) == 3  # 1260 trial-epochs; groups of 4: 1440
    assert sweep._halving_group_size(sweep._rungs(100, 50, 5, 3), 1) == 4  # no padding to speak of either way
    tr, va, _ = small
    spec, ranges = SPEC._replace(optimizer="sgd"), {"learning_rate": (1e-3, 3e-1)}
    _, chosen, summary = sweep.successive_halving(jax.random.key(5), spec, ranges, tr, va, n_trials=7, max_epochs=3,
                                                  min_epochs=1, eta=2)
    assert [(r["trials"], r["epochs"]) for r in summary["rungs"]] == [(7, 1), (4, 2), (2, 3)]
    _, fixed, _ = sweep.successive_halving(jax.random.key(5), spec, ranges, tr, va, n_trials=7, max_epochs=3,
                                           min_epochs=1, eta=2, group_size=4)
    assert [r["seed"] for r in chosen] == [r["seed"] for r in fixed]
    for a, b in zip(chosen, fixed):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_kfold_cv_vmapped_over_configurations_and_folds(small):
    tr, _, test = small
    x, y = tr
    result = sweep.kfold_cv(jax.random.key(3), SPEC._replace(optimizer="sgd"), {"learning_rate": [1e-4, 0.1]},
                            x, y, k=4, epochs=4)
    assert result.val_loss.shape == (2, 4) and result.val_acc.shape == (2, 4)
    assert result.best == 1  # lr 0.1 learns, 1e-4 barely moves
    assert result.val_acc[1].mean() > result.val_acc[0].mean() + 0.2
    best_models = jax.tree.map(lambda a: a[result.best], result.state)
    acc = sweep.ensemble_accuracy(best_models, jnp.asarray(test[0]), test[1])
    assert acc > 0.5


def test_kfold_cv_validates_data_kfold_indices_folds(small):
    """103 samples, 5 folds: each fold's model is validated on data.kfold_indices' 20 samples (the
    3 left over are trained on, never validated), and its state is that fold's."""
    tr, _, _ = small
    x, y = tr[0][:103], tr[1][:103]
    spec = SPEC._replace(optimizer="sgd", sizes=(64, 16, 10))
    result = sweep.kfold_cv(jax.random.key(5), spec, {"learning_rate": [0.1]}, x, y, k=5, epochs=1, seed=2)
    folds = data.kfold_indices(103, 5, seed=2)
    model = nn.mlp_model(spec.sizes)
    for f, (train_idx, val_idx) in enumerate(folds):
        assert len(val_idx) == 20 and len(train_idx) == 83
        state = jax.tree.map(lambda a: a[0, f], result.state)
        direct = train.evaluate(model, state.params, state.model_state, x[val_idx], y[val_idx])
        np.testing.assert_allclose(result.val_loss[0, f], direct["loss"], rtol=1e-5)
        np.testing.assert_allclose(result.val_acc[0, f], direct["acc"], atol=1e-6)
        # trained on 83 samples (2 batches of 40): the fold's step counter says so
        assert int(state.step) == 83 // spec.batch_size


@pytest.mark.parametrize("hp, match", [
    ({"learning_rate": [0.1, 0.2], "momentum": [0.9]}, "one value per trial"),
    ({"beta": [0.1]}, "cannot sweep 'beta' with momentum"),
])
def test_bad_sweeps(small, hp, match):
    tr, va, _ = small
    with pytest.raises(ValueError, match=match):
        sweep.run_trials(jax.random.key(0), SPEC, hp, tr, epochs=1, validation=va)


@pytest.mark.parametrize("value", [[None, None], ["0.1", "0.2"], [0.1 + 1j, 0.2]])
def test_hyperparameters_that_are_not_numbers_are_refused(value):
    """None became NaN and strings were parsed by NumPy's cast: refused, naming the hyperparameter."""
    with pytest.raises(TypeError, match=r"hyperparameter 'learning_rate' must be numbers, one per trial; got"):
        sweep.init_trials(jax.random.key(0), SPEC, {"learning_rate": value})
    trials = sweep.init_trials(jax.random.key(0), SPEC, {"learning_rate": jnp.asarray([0.1, 0.3], jnp.bfloat16)})
    assert trials.hparams["learning_rate"].dtype == jnp.float32  # numbers of any float dtype are cast


@pytest.mark.parametrize("seeds, err, match", [
    ([1.5, 2.0], TypeError, "seeds must be integers, one per trial; got float64"),
    ([True, False], TypeError, "seeds must be integers, one per trial; got bool"),
    ([1, 2, 3], ValueError, r"seeds must have one entry per trial \(2\); got 3"),
])
def test_bad_seeds(seeds, err, match):
    """A float seed was truncated to an int without a word: now refused, as a wrong count is."""
    with pytest.raises(err, match=match):
        sweep.init_trials(jax.random.key(0), SPEC, {"learning_rate": [0.1, 0.2]}, seeds=seeds)


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3"])
def test_searches_refuse_a_bad_trial_count(n):
    """n_trials=0 was an IndexError and -1 an MLIR error: now one ValueError before anything compiles."""
    ds, spec = data.load_digits(), SPEC
    for search in (lambda: sweep.random_search(jax.random.key(0), spec, {"learning_rate": (1e-3, 1e-1)},
                                               (ds.x_train, ds.y_train), (ds.x_test, ds.y_test), n_trials=n, epochs=1),
                   lambda: sweep.successive_halving(jax.random.key(0), spec, {"learning_rate": (1e-3, 1e-1)},
                                                    (ds.x_train, ds.y_train), (ds.x_test, ds.y_test), n_trials=n,
                                                    max_epochs=1)):
        with pytest.raises(ValueError, match=r"n_trials must be an int >= 1; got"):
            search()


# ------------------------------------------------------------- compare_optimizers' two protocols
def test_compare_optimizers_shared_and_own_initial_weights(small):
    (xt, yt), _, _ = small
    sizes = (64, 16, 10)
    opts = {"sgd": optim.sgd(0.1), "adam": optim.adam()}
    index = {name: i for i, name in enumerate(opts)}
    fresh = lambda name: nn.init_mlp(jax.random.fold_in(jax.random.key(3), index[name]), sizes)
    key = jax.random.key(1)
    own = sweep.compare_optimizers(key, opts, fresh, xt, yt, iterations=20, batch_size=30)
    batches = jax.random.randint(key, (20, 30), 0, len(xt))  # the book's draw, with replacement
    for name, opt in opts.items():  # each optimizer from its own start, trained alone on the same batches
        state, step_losses = train.run_steps(nn.mlp_model(sizes), opt, fresh(name), nn.init_bn_state(fresh(name)),
                                             jnp.asarray(xt), jnp.asarray(yt), batches)
        np.testing.assert_allclose(own[name][1], step_losses, rtol=1e-6)  # the fused program rounds its own way
        for got, want in zip(jax.tree.leaves(own[name][0]._replace(key=0)), jax.tree.leaves(state._replace(key=0))):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert own[name][0].params[0]["w"].shape == sizes[:2]
    assert own["sgd"][1][0] != own["adam"][1][0]  # two different networks: their first losses differ
    shared = sweep.compare_optimizers(key, opts, fresh("sgd"), xt, yt, iterations=20, batch_size=30)
    assert shared["sgd"][1][0] == shared["adam"][1][0]  # one network: the first loss is the same
    with pytest.raises(ValueError, match=r"params\('adam'\) must be shaped like params\('sgd'\)"):
        sweep.compare_optimizers(key, opts, lambda n: nn.init_mlp(jax.random.key(0), sizes if n == "sgd" else (64, 10)),
                                 xt, yt, iterations=5, batch_size=30)
