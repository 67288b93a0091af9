"""The installed wheel: the soup binary on the environment's PATH, modelsoup.run()
driving it (merge, inspect, greedy with an evaluator written with the helper
module), and run()'s handling of failures.

run.sh installs the wheel into a fresh venv and runs these tests with that venv's
Python, without activating it (so the venv's bin/ is not on PATH) and from a
directory outside the source tree (so `modelsoup` is the installed copy)."""

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import unittest
import zipfile
from pathlib import Path

import modelsoup
import support
from support import REPO, TINY

SCRIPTS = Path(sysconfig.get_path("scripts"))
PACKAGE_SOURCE = REPO / "python" / "modelsoup"


def cargo_version():
    text = (REPO / "Cargo.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


class TempDir(unittest.TestCase):
    def setUp(self):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        self.tmp = Path(d.name)


class Installed(TempDir):
    def test_the_package_is_the_installed_copy(self):
        self.assertTrue(Path(modelsoup.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()))
        self.assertEqual(modelsoup.__version__, cargo_version())

    def test_soup_is_in_the_environments_scripts_directory(self):
        exe = SCRIPTS / "soup"
        self.assertTrue(os.access(exe, os.X_OK))
        self.assertNotIn(str(SCRIPTS), os.environ.get("PATH", "").split(os.pathsep))
        self.assertEqual(modelsoup.soup_binary(), str(exe))

    def test_soup_version(self):
        out = subprocess.run([str(SCRIPTS / "soup"), "--version"], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), f"soup {cargo_version()}")
        # The same through PATH, as in an activated environment.
        env = dict(os.environ, PATH=f"{SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}")
        out = subprocess.run(["soup", "--version"], capture_output=True, text=True, check=True, env=env)
        self.assertEqual(out.stdout.strip(), f"soup {cargo_version()}")

    def test_python_dash_m_modelsoup_runs_soup(self):
        out = subprocess.run([sys.executable, "-m", "modelsoup", "--version"], capture_output=True, text=True)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, f"soup {cargo_version()}"))
        out = subprocess.run([sys.executable, "-m", "modelsoup", "merge"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)

    def test_the_wheel_holds_the_package_source_and_the_binary_only(self):
        wheel = os.environ.get("MODELSOUP_WHEEL")
        if not wheel:
            self.fail("run.sh sets MODELSOUP_WHEEL to the wheel under test")
        names = zipfile.ZipFile(wheel).namelist()
        package = sorted(n for n in names if n.startswith("modelsoup/"))
        # Every module in python/modelsoup (the persistent-evaluator server
        # included, when present), and nothing else: no tests, no caches.
        source = sorted(
            f"modelsoup/{p.name}" for p in PACKAGE_SOURCE.iterdir() if p.suffix in (".py", ".typed")
        )
        self.assertEqual(package, source)
        self.assertIn(f"modelsoup-{cargo_version()}.data/scripts/soup", names)
        metadata = zipfile.ZipFile(wheel).read(f"modelsoup-{cargo_version()}.dist-info/METADATA").decode()
        self.assertNotIn("Requires-Dist", metadata)

    def test_serve_is_there_exactly_when_the_server_module_is(self):
        shipped = (Path(modelsoup.__file__).parent / "server.py").exists()
        self.assertEqual(shipped, (PACKAGE_SOURCE / "server.py").exists())
        self.assertEqual(hasattr(modelsoup, "serve"), shipped)
        self.assertEqual("serve" in modelsoup.__all__, shipped)
        if shipped:
            self.assertTrue(callable(modelsoup.serve))


class Merge(TempDir):
    def test_uniform_soup_of_the_tiny_examples(self):
        out = self.tmp / "soup"
        summary = modelsoup.run("merge", TINY, "-o", out)
        self.assertEqual(summary["method"], "linear")
        self.assertEqual(summary["output"], str(out))
        self.assertEqual(summary["output_files"], [str(out / "model.safetensors")])
        self.assertEqual(summary["tensors"], 7)
        # The first ingredient's config and tokenizer, and the model card soup writes.
        self.assertEqual(
            sorted(summary["support_files"]), ["README.md", "config.json", "tokenizer_config.json"]
        )
        self.assertIn("## Method", (out / "README.md").read_text())
        self.assertEqual([i["path"] for i in summary["recipe"]["ingredients"]], [str(p) for p in TINY])
        self.assertTrue((out / "config.json").is_file())

        # Against the mean of the inputs computed here in f64, rounded once.
        inputs = [support.read_checkpoint(p) for p in TINY]
        soup, metadata = support.read_file(out / "model.safetensors")
        self.assertIn("modelsoup.recipe", metadata)
        self.assertEqual(sorted(soup), sorted(inputs[0]))
        self.assertEqual(summary["parameters"], sum(len(v) for _, _, v in soup.values()))
        checked = 0
        for name, (dtype, shape, values) in soup.items():
            self.assertEqual((dtype, shape), inputs[0][name][:2], name)
            columns = zip(*(t[name][2] for t in inputs))
            if dtype == "I64":
                self.assertEqual(values, inputs[0][name][2], name)
                continue
            for got, xs in zip(values, columns):
                mean = sum(xs) / len(xs)
                self.assertLessEqual(abs(got - mean), support.half_ulp(dtype, mean) * (1 + 1e-9), name)
                checked += 1
        self.assertGreater(checked, 1000)
        self.assertGreater(len({v for _, _, vs in soup.values() for v in vs}), 100)

    def test_arguments_may_be_paths_numbers_and_lists_and_json_is_not_doubled(self):
        out = self.tmp / "weighted"
        summary = modelsoup.run("merge", [TINY[0], TINY[1]], "--weights", "0.25,0.75", "-o", out, "--json")
        self.assertEqual([i["weight"] for i in summary["recipe"]["ingredients"]], [0.25, 0.75])
        summary = modelsoup.run("merge", TINY[0], TINY[1], "-o", out, "--force", "--threads", 1)
        self.assertEqual(summary["output"], str(out))
        with self.assertRaises(TypeError):
            modelsoup.run("merge", TINY[0], "-o", out, "--force", True)
        with self.assertRaises(ValueError):
            modelsoup.run("--version")

    def test_an_error_raises_with_the_exit_status_and_the_message(self):
        missing = self.tmp / "no-such-run"
        with self.assertRaises(modelsoup.SoupError) as caught:
            modelsoup.run("merge", TINY[0], missing, "-o", self.tmp / "out", echo=False)
        e = caught.exception
        self.assertEqual(e.returncode, 2)
        self.assertIn(str(missing), e.message)
        self.assertFalse(e.message.startswith("error:"))
        self.assertIn(f"error: {e.message}", e.stderr)
        self.assertEqual(str(e), f"soup exited with status 2: {e.message}")
        self.assertEqual(e.command[0], modelsoup.soup_binary())
        self.assertIsNone(e.result)
        self.assertFalse((self.tmp / "out").exists())

    def test_a_bad_argument_is_an_error_too(self):
        with self.assertRaises(modelsoup.SoupError) as caught:
            modelsoup.run("merge", TINY[0], "-o", self.tmp / "out", "--no-such-flag", echo=False)
        self.assertEqual(caught.exception.returncode, 2)
        self.assertIn("--no-such-flag", caught.exception.message)


class Inspect(TempDir):
    def test_one_checkpoint(self):
        info = modelsoup.run("inspect", TINY[2])
        (ckpt,) = info["checkpoints"]
        self.assertEqual(len(ckpt["tensors"]), 7)
        self.assertEqual(len(ckpt["shards"]), 2)
        self.assertEqual(ckpt["parameters"], sum(len(v) for _, _, v in support.read_checkpoint(TINY[2]).values()))

    def test_checkpoints_that_cannot_be_souped_exit_1_with_the_report(self):
        bad = self.tmp / "bad"
        bad.mkdir()
        tensors, _ = support.read_file(TINY[0] / "model.safetensors")
        raw = {name: (d, s, b"\0" * (len(v) * support._SIZES[d])) for name, (d, s, v) in tensors.items()}
        raw["classifier.bias"] = ("F32", [3], b"\0" * 12)
        support.write_file(bad / "model.safetensors", raw)

        self.assertTrue(modelsoup.run("inspect", TINY[0], TINY[1])["compatible"])
        with self.assertRaises(modelsoup.SoupError) as caught:
            modelsoup.run("inspect", TINY[0], bad, echo=False)
        e = caught.exception
        self.assertEqual(e.returncode, 1)
        self.assertIs(e.result["compatible"], False)
        self.assertTrue(any("classifier.bias" in d for d in e.result["differences"]))
        info = modelsoup.run("inspect", TINY[0], bad, check=False, echo=False)
        self.assertEqual(info, e.result)


class Angles(TempDir):
    """Angles against cosines computed here over every float tensor, in f64."""

    @staticmethod
    def angle(x, y):
        dot = sum(a * b for a, b in zip(x, y))
        nx, ny = math.sqrt(sum(a * a for a in x)), math.sqrt(sum(b * b for b in y))
        return dot / (nx * ny), nx

    def test_raw_weights(self):
        vectors = [support.float_vector(support.read_checkpoint(p)) for p in TINY]
        result = modelsoup.run("angles", TINY)
        self.assertEqual(result["names"], [str(p) for p in TINY])
        self.assertEqual(result["parameters"], len(vectors[0]))
        for i, x in enumerate(vectors):
            for j, y in enumerate(vectors):
                cos, norm = self.angle(x, y)
                self.assertAlmostEqual(result["cosines"][i][j], cos, delta=1e-9)
                degrees = math.degrees(math.acos(min(1.0, cos)))
                self.assertAlmostEqual(result["angles_deg"][i][j], degrees, delta=1e-4 if i == j else 1e-6)
            self.assertAlmostEqual(result["norms"][i], norm, delta=norm * 1e-9)
        self.assertGreater(result["angles_deg"][0][1], 1.0)

    def test_deltas_from_a_base(self):
        # run-c stands for the pretrained model: the angles are between a - c and b - c.
        base = support.float_vector(support.read_checkpoint(TINY[2]))
        deltas = [
            [v - b for v, b in zip(support.float_vector(support.read_checkpoint(p)), base)] for p in TINY[:2]
        ]
        result = modelsoup.run("angles", "--base", TINY[2], TINY[:2])
        cos, norm = self.angle(deltas[0], deltas[1])
        self.assertAlmostEqual(result["angles_deg"][0][1], math.degrees(math.acos(cos)), delta=1e-6)
        base_norm = math.sqrt(sum(b * b for b in base))
        self.assertEqual(result["measure"], "delta_angle")
        self.assertAlmostEqual(result["base_norm"], base_norm, delta=base_norm * 1e-9)
        self.assertAlmostEqual(result["norms"][0], norm, delta=norm * 1e-9)
        self.assertAlmostEqual(result["delta_norms"][0], norm / base_norm, delta=norm / base_norm * 1e-9)


class Greedy(TempDir):
    def reference(self, target):
        """The paper's greedy soup, computed here: ingredients sorted by their own
        score, each kept if the soup's score does not drop (soups as f64 means)."""
        vectors = [support.float_vector(support.read_checkpoint(p)) for p in TINY]

        def score(members):
            mean = [sum(col) / len(members) for col in zip(*(vectors[i] for i in members))]
            return -sum((m - t) ** 2 for m, t in zip(mean, target))

        order = sorted(range(len(TINY)), key=lambda i: -score([i]))
        soup, decisions = [order[0]], []
        for i in order[1:]:
            keep = score(soup + [i]) >= score(soup)
            decisions.append((f"add {TINY[i]}", keep))
            if keep:
                soup.append(i)
        individual = {str(p): score([i]) for i, p in enumerate(TINY)}
        return [str(TINY[i]) for i in sorted(soup)], score(soup), decisions, individual

    def test_greedy_search_with_a_python_evaluator(self):
        # Target: 0.7·a + 0.3·b, so that a is best alone, b improves the soup and
        # c (in this data) does not.
        a, b, _ = (support.float_vector(support.read_checkpoint(p)) for p in TINY)
        target = [0.7 * x + 0.3 * y for x, y in zip(a, b)]
        (self.tmp / "target.json").write_text(json.dumps(target))
        members, score, decisions, individual = self.reference(target)
        self.assertEqual(members, [str(TINY[0]), str(TINY[1])])
        self.assertEqual([keep for _, keep in decisions], [True, False])

        evaluator = f"{sys.executable} {REPO / 'python' / 'tests' / 'tiny_eval.py'} {self.tmp / 'target.json'}"
        out = self.tmp / "best"
        report = modelsoup.run("greedy", TINY, "-o", out, "--eval", evaluator, "--quiet")

        self.assertEqual(report["method"], "greedy")
        self.assertEqual(sorted(report["members"]), members)
        self.assertEqual(report["weights"], [0.5, 0.5])
        self.assertAlmostEqual(report["score"], score, delta=abs(score) * 1e-2)
        self.assertEqual(report["best_individual"]["members"], [str(TINY[0])])
        self.assertGreater(report["score"], report["best_individual"]["score"])
        self.assertEqual(set(report["individual_scores"]), set(individual))
        for path, value in individual.items():
            self.assertAlmostEqual(report["individual_scores"][path], value, delta=abs(value) * 1e-2)
        self.assertEqual([(s["proposal"], s["accepted"]) for s in report["steps"]], decisions)
        self.assertEqual(report["evaluations"]["failed"], 0)
        self.assertTrue(report["steps"])
        for step in report["steps"]:
            self.assertEqual(step["metrics"]["candidate"], step["candidate"])
            self.assertIsNone(step["metrics"]["undefined"])
            self.assertAlmostEqual(step["metrics"]["distance"] ** 2, -step["score"], delta=1e-9 + abs(step["score"]) * 1e-9)
        self.assertTrue((out / "model.safetensors").is_file())
        self.assertEqual(json.loads((self.tmp / "best.run" / "report.json").read_text()), report)

    def test_a_search_that_can_score_nothing_exits_1(self):
        failing = f"{sys.executable} -c 'import sys; sys.exit(3)'"
        args = ("greedy", TINY, "-o", self.tmp / "none", "--eval", failing, "--quiet")
        with self.assertRaises(modelsoup.SoupError) as caught:
            modelsoup.run(*args, echo=False)
        self.assertEqual(caught.exception.returncode, 1)
        self.assertIn("could be scored", caught.exception.message)
        self.assertIsNone(modelsoup.run(*args, "--force", check=False, echo=False))
        self.assertFalse((self.tmp / "none").exists())


class FakeSoup(TempDir):
    """run() against stand-ins for soup (MODELSOUP_BINARY or soup=)."""

    def fake(self, script):
        path = self.tmp / "fake-soup"
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        return path

    def test_the_binary_can_be_overridden(self):
        fake = self.fake('echo "{\\"args\\": \\"$*\\"}"\n')
        self.assertEqual(modelsoup.run("merge", "x", soup=fake), {"args": "merge --json x"})
        os.environ[modelsoup.BINARY_ENV] = str(fake)
        try:
            self.assertEqual(modelsoup.soup_binary(), str(fake))
            self.assertEqual(modelsoup.run("inspect", "--", "-y"), {"args": "inspect --json -- -y"})
        finally:
            del os.environ[modelsoup.BINARY_ENV]
        with self.assertRaises(FileNotFoundError):
            modelsoup.soup_binary(self.tmp / "missing")

    def test_output_that_is_not_json(self):
        with self.assertRaisesRegex(modelsoup.SoupError, "not JSON"):
            modelsoup.run("merge", soup=self.fake("echo 'done: 3 tensors'\n"))
        with self.assertRaisesRegex(modelsoup.SoupError, "printed nothing"):
            modelsoup.run("merge", soup=self.fake("exit 0\n"))

    def test_a_soup_killed_by_a_signal(self):
        with self.assertRaises(modelsoup.SoupError) as caught:
            modelsoup.run("merge", soup=self.fake("echo 'warning: x' >&2; kill -9 $$\n"), echo=False)
        self.assertEqual(caught.exception.returncode, -signal.SIGKILL)
        self.assertIn("killed by SIGKILL", str(caught.exception))
        self.assertIn("warning: x", caught.exception.stderr)

    def test_stderr_is_drained_while_soup_runs(self):
        # 1 MB of stderr before any output: a pipe left unread would block soup.
        fake = self.fake("head -c 1000000 /dev/zero | tr '\\0' 'x' | fold -w 100 >&2; echo '{\"ok\": 1}'\n")
        self.assertEqual(modelsoup.run("merge", soup=fake, echo=False), {"ok": 1})

    def test_ctrl_c_is_passed_on_and_waited_for(self):
        marker = self.tmp / "stopped"
        started = self.tmp / "started"
        fake = self.fake(
            f"trap 'kill $!; echo cleaned > {marker}; exit 130' INT\n"
            f"touch {started}\n"
            "sleep 30 & wait\n"
        )
        def interrupt():
            while not started.exists():
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        with self.assertRaises(KeyboardInterrupt):
            modelsoup.run("greedy", soup=fake, echo=False)
        # run() returned only after soup had handled SIGINT and exited.
        self.assertEqual(marker.read_text().strip(), "cleaned")


if __name__ == "__main__":
    unittest.main()
