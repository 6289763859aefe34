"""The sample project, driven through Django's test client and its ``manage.py``.

The cases live in ``sample_cases.py`` and run under the sample's own settings in one
pytest subprocess (``--ds=config.settings``, ``--confcutdir`` so that this suite's
conftest, which resets the default backend, stays out of it). Each case is then
reported here as a test of its own: a case that failed, errored, was skipped or did
not run fails its test here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from .support import HERE, REDIS_URL, ROOT, manage, sample_env

CASES = HERE / "sample_cases.py"
CASE_NAMES = [node.name for node in ast.parse(CASES.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


@dataclass
class SampleRun:
    returncode: int
    output: str
    results: dict[str, tuple[str, str]]  # junit test name -> (outcome, details)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> SampleRun:
    junit = tmp_path_factory.mktemp("sample") / "junit.xml"
    command = [sys.executable, "-m", "pytest", str(CASES), "--ds=config.settings",
               f"--confcutdir={HERE}", "-p", "no:cacheprovider", "-q",
               f"--junitxml={junit}", "-o", "junit_logging=all"]
    proc = subprocess.run(command, cwd=ROOT, env=sample_env(), capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout + proc.stderr
    if not junit.exists():
        pytest.fail(f"the sample's tests did not run (exit {proc.returncode}):\n{output}")
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, details = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                details = "\n".join(filter(None, [child.get("message", ""), child.text]))
                break
        results[case.get("name")] = (outcome, details)
    return SampleRun(proc.returncode, output, results)


def test_sample_cases_all_ran(sample_run):
    """Every test function of sample_cases.py ran, and nothing else did."""
    ran = {name.split("[", 1)[0] for name in sample_run.results}
    assert ran == set(CASE_NAMES), sample_run.output
    assert sample_run.returncode == 0, sample_run.output


@pytest.mark.parametrize("case", CASE_NAMES)
def test_sample(sample_run, case):
    results = {name: result for name, result in sample_run.results.items()
               if name == case or name.startswith(case + "[")}
    assert results, f"{case} did not run in the sample project:\n{sample_run.output}"
    bad = [f"{name}: {outcome}\n{details}" for name, (outcome, details) in results.items()
           if outcome != "passed"]
    assert not bad, "\n\n".join(bad)


def test_manage_py_commands(tmp_path):
    """The sample's commands as a user types them: a fresh SQLite file, migrate, seed
    (with its progress bar on the terminal), seed again, append, then the cache
    commands and the admin login the pages' footer tells of."""
    env = sample_env(sqlite_path=tmp_path / "db.sqlite3")
    manage("migrate", "--no-input", env=env)

    seeded = manage("seed_books", "--books", "40", "--genres", "6", "--publishers", "5",
                    env=env)
    assert "\r[" + "#" * 30 + "] 40/40 books" in seeded.stdout
    assert seeded.stdout.rstrip().endswith("Seeded 40 books, 6 genres, 5 publishers.")

    again = manage("seed_books", "--books", "40", env=env)
    assert again.stdout == "The database already has books; pass --append to add more.\n"

    appended = manage("seed_books", "--books", "10", "--genres", "2", "--publishers", "1",
                      "--append", "--no-progress", env=env)
    assert appended.stdout == "Seeded 10 books, 6 genres, 5 publishers.\n"  # reused

    assert manage("check", env=env).stdout.startswith("System check identified no issues")

    stats = manage("cache_stats", env=env).stdout
    assert "hits: 0\n" in stats and "misses: 0\n" in stats
    assert ("Redis memory used:" in stats) == bool(REDIS_URL)

    assert manage("clear_book_cache", "--all-books", env=env).stdout == (
        "All book cache cleared\n")
    assert manage("clear_book_cache", "--tag", "book:1", env=env).stdout == (
        'Cache with tag "book:1" cleared\n')
    refused = manage("clear_book_cache", env=env, check=False)
    assert refused.returncode == 1
    assert "Specify --tag or --all-books" in refused.stderr

    invalidated = manage("relaycache", "invalidate", "--model", "books.Book", env=env)
    assert "books_book" in invalidated.stdout

    # The footer's hint for reaching the admin works as written (here non-interactive).
    created = manage("createsuperuser", "--noinput", "--username", "admin",
                     "--email", "admin@example.com",
                     env={**env, "DJANGO_SUPERUSER_PASSWORD": "sample-admin-pw"})
    assert created.stdout == "Superuser created successfully.\n"

