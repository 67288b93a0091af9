"""modelsoup.evaluator: the score line against the protocol of docs/EVALUATOR.md,
the model path, and evaluate()'s handling of results and failures."""

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from fractions import Fraction
from unittest import mock

import modelsoup


class FakeScalar:
    """Stands for a NumPy or PyTorch scalar: item() gives the Python value."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value

    def __float__(self):
        return float(self.value)


class FakeArray:
    """Stands for a NumPy array: tolist() gives nested lists."""

    def __init__(self, rows):
        self.rows = rows

    def tolist(self):
        return self.rows


def last_line(text):
    """The protocol's rule: the last non-empty line, lines ending at \\n or \\r."""
    lines = [l.strip() for l in text.replace("\r", "\n").split("\n")]
    return [l for l in lines if l][-1]


class ScoreLine(unittest.TestCase):
    def test_bare_numbers_read_back_exactly(self):
        for x in [0.8312, -1.5, 2e-3, 1e16, -9e-9, 1 / 3, 5e-324, 12345678901234567.0]:
            line = modelsoup.score_line(x)
            self.assertEqual(float(line), x, line)
            self.assertEqual(line, repr(x))
        self.assertEqual(modelsoup.score_line(3), "3.0")
        self.assertEqual(modelsoup.score_line(Fraction(1, 4)), "0.25")
        self.assertEqual(modelsoup.score_line(FakeScalar(0.75)), "0.75")

    def test_metrics_make_a_one_line_json_object(self):
        line = modelsoup.score_line(0.83, {"loss": 0.41, "n": 5000, "name": "a\nb"})
        self.assertNotIn("\n", line)
        self.assertEqual(json.loads(line), {"score": 0.83, "loss": 0.41, "n": 5000, "name": "a\nb"})
        self.assertEqual(list(json.loads(line))[0], "score")

    def test_a_mapping_result_is_score_plus_metrics(self):
        line = modelsoup.score_line({"loss": 0.5, "score": 0.25})
        self.assertEqual(json.loads(line), {"score": 0.25, "loss": 0.5})
        self.assertEqual(modelsoup.score_line({"score": 0.5}), "0.5")

    def test_non_finite_metrics_become_null_and_others_plain_json(self):
        line = modelsoup.score_line(
            0.5,
            {
                "nan": float("nan"),
                "inf": float("-inf"),
                "scalar": FakeScalar(2.5),
                "array": FakeArray([[1.0, float("nan")], [3, 4]]),
                "nested": {"a": (1, float("inf")), "b": None, "c": True},
            },
        )
        self.assertNotIn("NaN", line)
        self.assertNotIn("Infinity", line)
        self.assertEqual(
            json.loads(line),
            {
                "score": 0.5,
                "nan": None,
                "inf": None,
                "scalar": 2.5,
                "array": [[1.0, None], [3, 4]],
                "nested": {"a": [1, None], "b": None, "c": True},
            },
        )

    def test_non_finite_scores_are_printed_bare_for_soup_to_reject(self):
        for x, text in [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")]:
            self.assertEqual(modelsoup.score_line(x), text)
            self.assertEqual(modelsoup.score_line({"score": x, "loss": 1.0}), text)

    def test_what_is_not_a_score(self):
        for bad in [None, True, "0.8", b"1", [0.5], object()]:
            with self.assertRaises(TypeError, msg=repr(bad)):
                modelsoup.score_line(bad)
        with self.assertRaisesRegex(ValueError, "no \"score\""):
            modelsoup.score_line({"accuracy": 0.9})
        with self.assertRaisesRegex(ValueError, "given twice"):
            modelsoup.score_line({"score": 0.9, "loss": 1}, {"loss": 2})
        with self.assertRaisesRegex(TypeError, "not JSON"):
            modelsoup.score_line(0.5, {"model": object()})
        with self.assertRaisesRegex(TypeError, "strings"):
            modelsoup.score_line({"score": 0.5, 3: 1})

    def test_a_line_too_long_for_soup_is_refused(self):
        self.assertLess(len(modelsoup.score_line(0.5, {"x": "a" * 60000})), 64 * 1024)
        with self.assertRaisesRegex(ValueError, "64 KiB"):
            modelsoup.score_line(0.5, {"x": "a" * (64 * 1024)})


class Report(unittest.TestCase):
    def capture(self, *args, **kwargs):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            modelsoup.report(*args, **kwargs)
        return out.getvalue(), err.getvalue()

    def test_the_score_is_the_last_line_even_after_an_unfinished_one(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print("epoch 3/3 [=====>   ]", end="")
            modelsoup.report(0.75, loss=0.5)
        self.assertEqual(json.loads(last_line(out.getvalue())), {"score": 0.75, "loss": 0.5})

    def test_nan_is_reported_as_nan_with_a_note(self):
        out, err = self.capture({"score": float("nan"), "loss": 2.0})
        self.assertEqual(last_line(out), "nan")
        self.assertIn("failed", err)
        self.assertIn("loss", err)

    def test_kwargs_are_metrics(self):
        out, err = self.capture(0.5, n=3)
        self.assertEqual(json.loads(last_line(out)), {"score": 0.5, "n": 3})
        self.assertEqual(err, "")


class ModelPath(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.model = os.path.join(self.dir.name, "my soup 'x'")
        os.mkdir(self.model)

    def test_soup_model_wins_over_arguments(self):
        with mock.patch.dict(os.environ, {"SOUP_MODEL": self.model}):
            self.assertEqual(modelsoup.model_path(["--split", "val"]), self.model)
            self.assertEqual(modelsoup.model_path(["val"]), self.model)

    def test_by_hand_the_first_argument(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(modelsoup.model_path([self.model, "--split", "val"]), self.model)
            with self.assertRaisesRegex(ValueError, "first argument"):
                modelsoup.model_path(["--split", "val"])
            with self.assertRaisesRegex(ValueError, "SOUP_MODEL"):
                modelsoup.model_path([])
            with self.assertRaises(FileNotFoundError):
                modelsoup.model_path([os.path.join(self.dir.name, "missing")])

    def test_candidate_reads_soups_variables(self):
        env = {"SOUP_MODEL": self.model, "SOUP_CANDIDATE": "greedy-0007", "SOUP_RUN_DIR": self.dir.name, "SOUP_ATTEMPT": "2"}
        with mock.patch.dict(os.environ, env, clear=True):
            self.assertEqual(
                modelsoup.candidate(),
                modelsoup.Candidate(model=self.model, id="greedy-0007", run_dir=self.dir.name, attempt=2),
            )
        with mock.patch.dict(os.environ, {}, clear=True):
            c = modelsoup.candidate([self.model])
            self.assertEqual((c.id, c.run_dir, c.attempt), (None, None, 1))
            self.assertEqual((c.grad, c.temperature), (None, None))
        grad = os.path.join(self.dir.name, "learned-0004.grad.safetensors")
        env = {"SOUP_MODEL": self.model, "SOUP_GRAD": grad, "SOUP_TEMPERATURE": "0.25"}
        with mock.patch.dict(os.environ, env, clear=True):
            c = modelsoup.candidate()
            self.assertEqual((c.grad, c.temperature), (grad, 0.25))


class Evaluate(unittest.TestCase):
    """evaluate() in a real child process, as soup runs it."""

    def script(self, body):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        path = os.path.join(d.name, "eval.py")
        with open(path, "w") as f:
            f.write("import modelsoup\n" + textwrap.dedent(body))
        return path, d.name

    def run_eval(self, body, *args, env=None):
        path, model = self.script(body)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SOUP_")}
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, path, *(args or [model])], capture_output=True, text=True, env=full_env
        ), model

    def test_the_scoring_function_gets_the_path_and_its_result_is_printed(self):
        proc, model = self.run_eval(
            """
            import os
            print("noise")
            modelsoup.evaluate(lambda m: {"score": 0.5, "is_dir": os.path.isdir(m), "path": m})
            """
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(last_line(proc.stdout)), {"score": 0.5, "is_dir": True, "path": model})

    def test_an_exception_fails_the_evaluation(self):
        proc, _ = self.run_eval("modelsoup.evaluate(lambda m: 1 / 0)\n")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("ZeroDivisionError", proc.stderr)
        self.assertEqual(proc.stdout.strip(), "")

    def test_returning_none_fails_the_evaluation(self):
        proc, _ = self.run_eval("modelsoup.evaluate(lambda m: None)\n")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("returned None", proc.stderr)

    def test_no_model_fails_the_evaluation(self):
        proc, _ = self.run_eval("modelsoup.evaluate(lambda m: 1.0)\n", "--split")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("no candidate model", proc.stderr)

    def test_nan_exits_zero_and_prints_nan(self):
        proc, _ = self.run_eval("modelsoup.evaluate(lambda m: float('nan'))\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(last_line(proc.stdout), "nan")
        self.assertTrue(math.isnan(float(last_line(proc.stdout))))


@unittest.skipUnless(importlib.util.find_spec("modelsoup.server"), "no modelsoup.server in this build")
class ServeGradient(unittest.TestCase):
    """modelsoup.server: the gradient's path and the temperature reach score_fn,
    and grad_temperature goes back with the score."""

    def test_requests_carry_grad_and_temperature(self):
        from modelsoup.server import serve

        requests = [
            {"candidate": "learned-0004", "model": "/m", "members": ["a"], "weights": [1.0],
             "grad": "/s/learned-0004.grad.safetensors", "temperature": 0.5},
            {"candidate": "learned-0001", "model": "/m", "members": ["a"], "weights": [1.0]},
        ]
        seen = []

        def score(request):
            seen.append((request.grad, request.temperature))
            return {"score": 0.25, "grad_temperature": -1.5} if request.grad else 0.75

        stdout = io.StringIO()
        serve(score, stdin=io.StringIO("".join(json.dumps(r) + "\n" for r in requests)), stdout=stdout)
        self.assertEqual(seen, [("/s/learned-0004.grad.safetensors", 0.5), (None, None)])
        replies = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual(replies[0], {"candidate": "learned-0004", "score": 0.25, "grad_temperature": -1.5})
        self.assertEqual(replies[1], {"candidate": "learned-0001", "score": 0.75})


if __name__ == "__main__":
    unittest.main()
