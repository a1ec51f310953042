"""The flags of `jaxscratch train` (jaxscratch/_flags.py): switches as --flag/--no-flag, stored
switches read back, and optimizer errors that name the flag from the exception's attributes."""
import json

import pytest

from jaxscratch import _flags, checkpoint, cli

SWITCHES = {"--batchnorm": "batchnorm", "--eps-in-sqrt": "eps_in_sqrt", "--fold-bias-correction": "fold_bias_correction"}
TINY = ["--epochs", "1", "--hidden", "8", "--batch-size", "128", "--quiet"]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("flag, dest", sorted(SWITCHES.items()))
def test_switches_are_flag_and_no_flag(flag, dest):
    parse = _flags.build_parser().parse_args
    assert getattr(parse(["train", flag]), dest) is True
    assert getattr(parse(["train", "--no-" + flag[2:]]), dest) is False
    assert getattr(parse(["train"]), dest) is None  # not given: the default (or the optimizer's own)
    assert getattr(parse(["train", flag, "--no-" + flag[2:]]), dest) is False  # the last one wins


@pytest.mark.parametrize("value", ["true", "false", "yes", "0", "maybe"])
@pytest.mark.parametrize("flag", sorted(SWITCHES))
def test_the_old_flag_value_form_is_one_line_naming_the_switch(flag, value, capsys, tmp_path):
    out = tmp_path / "never"
    for given in (flag, "--no-" + flag[2:]):
        code, _, err = run(["train", "--optimizer", "adagrad", given, value, "--out", out], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"jaxscratch train: error: argument {given}: expected no value")
        assert f"{flag} turns it on, --no-{flag[2:]} off); got {value!r}" in err
    assert not out.exists()


def test_a_switch_for_another_optimizer_is_refused_either_way(capsys, tmp_path):
    for given in ("--eps-in-sqrt", "--no-eps-in-sqrt"):
        code, _, err = run(["train", given, "--out", tmp_path / "never"], capsys)
        assert code == 2 and "--eps-in-sqrt does not apply to adam; it applies to adagrad, rmsprop" in err, err


def test_stored_switches_resume_and_conflicts_name_them(capsys, tmp_path):
    """A run stores its switches as JSON booleans; --resume reads them back (the same flag again is
    fine, the opposite one a conflict), and a stored value that is not a boolean is refused."""
    out = tmp_path / "run"
    flags = ["--optimizer", "adagrad", "--eps-in-sqrt", "--no-batchnorm", *TINY]
    assert run(["train", "--out", out, *flags], capsys)[0] == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["eps_in_sqrt"] is True and cfg["batchnorm"] is False
    code, _, err = run(["train", "--out", out, "--resume", "--epochs", "2", "--eps-in-sqrt", "--quiet"], capsys)
    assert code == 0, err
    assert checkpoint.load_metadata(out / "checkpoint.npz")["config"]["eps_in_sqrt"] is True
    code, _, err = run(["train", "--out", out, "--resume", "--epochs", "3", "--no-eps-in-sqrt"], capsys)
    assert code == 2 and "--resume: --eps-in-sqrt False conflicts with the run's True" in err, err
    meta = checkpoint.load_metadata(out / "checkpoint.npz")
    for bad in ("true", 1, None):
        broken = dict(meta, config=dict(meta["config"], eps_in_sqrt=bad))
        if bad is None:  # None is "not given" for an optimizer's switch: fine
            _flags.stored_config(broken, "c.npz")
            continue
        with pytest.raises(_flags.UsageError, match=r"c.npz holds an invalid configuration: --eps-in-sqrt: "
                                                   r"expected true or false; got"):
            _flags.stored_config(broken, "c.npz")


@pytest.mark.parametrize("argv, message", [
    (["--b1", "1.5"], "--b1 must be in [0, 1); got 1.5 (--optimizer adam)"),
    (["--optimizer", "rmsprop", "--decay", "1.5"], "--decay must be in [0, 1]; got 1.5 (--optimizer rmsprop)"),
    (["--optimizer", "adadelta", "--rho", "-0.5"], "--rho must be in [0, 1]; got -0.5 (--optimizer adadelta)"),
])
def test_optimizer_range_errors_name_the_flag(argv, message, capsys, tmp_path):
    code, _, err = run(["train", *argv, "--out", tmp_path / "never"], capsys)
    assert code == 2 and err == f"jaxscratch train: error: {message}\n"
    assert not (tmp_path / "never").exists()
