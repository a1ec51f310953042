"""Every bad input of tools/make_errors_table.py: at the command line one clear line, the right
exit status, no traceback and nothing left behind; and docs/errors.md shows what they give now."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_errors_table", ROOT / "tools" / "make_errors_table.py")
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)


@pytest.fixture(scope="module")
def results():
    return table.run_cases()


def expected_status(case) -> str:
    if case.stop_at_save:
        return "130"
    return "1" if "diverges" in case.what else "2"


def test_every_command_line_case_is_one_clear_line(results):
    cli_results = [r for r in results if not r.case.how.startswith("python: ")]
    assert len(cli_results) > 80
    for r in cli_results:
        line = r.message
        assert r.status == expected_status(r.case), r
        assert len(line.splitlines()) == 1 and "Traceback" not in line, r
        assert line.startswith("jaxscratch") and (": error: " in line or ": interrupted" in line), r
        assert r.left == r.case.leaves, r  # no half-written output, no empty --out folder


def test_every_named_choice_lists_the_valid_ones(results):
    choices = [r for r in results if r.case.section == table.F and r.case.what.startswith("unknown ")
               and r.case.what not in ("unknown flag", "unknown subcommand")]
    assert len(choices) >= 6
    for r in choices:
        assert "expected one of " in r.message or "expected digits, mnist, fashion-mnist or a path" in r.message, r


def test_python_calls_raise_the_library_errors(results):
    for r in (r for r in results if r.case.how.startswith("python: ")):
        if r.case.how.startswith("python: train.fit"):
            expected = ("ValueError", "TypeError")
        elif r.case.how.startswith("python: optim."):
            expected = ("HyperparameterError", "HyperparameterTypeError", "HyperparameterValueError")
        else:
            expected = ("DataError", "CheckpointError")
        assert r.status in expected and r.message, r


def test_docs_errors_md_is_up_to_date(results):
    text = table.DOC.read_text()
    if f"Generated with {table.versions()}." not in text:
        pytest.skip(f"docs/errors.md was generated with other versions than {table.versions()}: "
                    "stdlib and NumPy messages may differ")
    assert table.render(results) == text, "a message changed: run python tools/make_errors_table.py"
