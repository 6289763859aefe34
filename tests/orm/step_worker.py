"""A Django process driven one step at a time, for tests that need an exact
interleaving of real processes (a reader caching between another process's
invalidation and its COMMIT, a read on a paused replica...).

:class:`StepWorker` starts ``python -m tests.orm.step_worker`` with its own
``DATABASES`` and ``RELAYCACHE`` settings; each :meth:`StepWorker.call` sends one JSON
line naming a step and waits for the JSON line that answers it. A step that raises
answers with the exception, which ``call`` raises as :class:`StepFailed`. Steps work on
``tests.ormapp`` labels: cached and uncached reads through any alias, writes,
``atomic`` blocks held open across steps, manual transactions, and a ``@cache``
function tagged ``label:<pk>`` that a ``post_save`` receiver invalidates, as the
integration guide's receivers do.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.orm.stale_worker import configure_django

ROOT = Path(__file__).resolve().parents[2]
CONFIG_ENV = "RELAYCACHE_STEP_WORKER"


class StepFailed(Exception):
    """A step raised in the worker (its type and message)."""


class Steps:
    """The steps a worker runs: each method takes keyword arguments from the JSON line
    and returns something JSON can carry."""

    def __init__(self) -> None:
        from django.db import transaction
        from django.db.models.signals import post_save

        from relaycache import cache, get_default_backend, invalidate
        from tests.ormapp.models import Label

        self.Label = Label
        self.transaction = transaction
        self.blocks: list[Any] = []
        self.backend = get_default_backend()

        @cache(ttl=60, tags=lambda pk: [f"label:{pk}"])
        def label_name(pk: int) -> str:
            return str(Label.objects.values_list("name", flat=True).get(pk=pk))

        def receiver(instance: Any, **kwargs: Any) -> None:
            invalidate([f"label:{instance.pk}"])

        self._label_name = label_name
        post_save.connect(receiver, sender=Label, weak=False)

    def create_tables(self, using: str = "default") -> None:
        from django.db import connections

        with connections[using].schema_editor() as editor:
            editor.create_model(self.Label)

    def create(self, name: str, using: str = "default") -> int:
        return int(self.Label.objects.using(using).create(name=name).pk)

    def cached_name(self, pk: int, using: str = "default") -> str:
        """A cached queryset read (the ORM path)."""
        return str(self.Label.objects.cached().using(using).values_list(
            "name", flat=True).get(pk=pk))

    def label_name(self, pk: int) -> str:
        """The ``@cache`` function tagged ``label:<pk>``."""
        return str(self._label_name(pk))

    def update(self, pk: int, name: str, using: str = "default") -> int:
        return int(self.Label.objects.using(using).filter(pk=pk).update(name=name))

    def save(self, pk: int, name: str) -> None:
        """``save()``: its ``post_save`` receiver invalidates ``label:<pk>``."""
        label = self.Label.objects.get(pk=pk)
        label.name = name
        label.save()

    def begin(self) -> None:
        block = self.transaction.atomic()
        block.__enter__()
        self.blocks.append(block)

    def commit(self) -> None:
        self.blocks.pop().__exit__(None, None, None)

    def set_autocommit(self, value: bool) -> None:
        self.transaction.set_autocommit(value)

    def manual_commit(self) -> None:
        self.transaction.commit()

    def manual_rollback(self) -> None:
        self.transaction.rollback()

    def stats(self) -> dict[str, int]:
        return dict(self.backend.stats.snapshot())


def worker_main(config: dict[str, Any]) -> None:
    configure_django(config["databases"], config["relaycache"])
    steps = Steps()
    for line in sys.stdin:
        request = json.loads(line)
        name = request.pop("step")
        if name == "exit":
            break
        try:
            answer = {"result": getattr(steps, name)(**request)}
        except Exception as exc:  # sent back, raised by the test
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


class StepWorker:
    """One worker process (see the module docstring)."""

    def __init__(self, databases: dict[str, Any], relaycache: dict[str, Any],
                 timeout: float = 30.0) -> None:
        self.timeout = timeout
        # Lives as long as the worker; close() closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
               CONFIG_ENV: json.dumps({"databases": databases, "relaycache": relaycache}),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.orm.step_worker"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)

    def call(self, step: str, **arguments: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"step": step, **arguments}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"step {step!r}: no answer from the worker within "
                               f"{self.timeout}s:\n{self.stderr()}")
        answer = json.loads(line)
        if "error" in answer:
            raise StepFailed(f"step {step!r}: {answer['error']}")
        return answer["result"]

    def __getattr__(self, step: str) -> Callable[..., Any]:
        """``worker.update(pk=1, name="x")`` is ``worker.call("update", ...)``."""
        if step.startswith("_"):
            raise AttributeError(step)
        return lambda **arguments: self.call(step, **arguments)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"step": "exit"}) + "\n")
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


class Workers:
    """Start workers and close them all (a test's fixture), on one key prefix of one
    Redis whose keys are deleted at the end."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.prefix = f"step{os.urandom(5).hex()}:"
        self.started: list[StepWorker] = []

    def start(self, databases: dict[str, Any], **relaycache: Any) -> StepWorker:
        worker = StepWorker(databases, {"BACKEND": self.redis_url, "KEY_PREFIX": self.prefix,
                                        "DEFAULT_TTL": 60, **relaycache})
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.close()
        client = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start:start + 500])
        finally:
            client.close()


if __name__ == "__main__":
    worker_main(json.loads(os.environ[CONFIG_ENV]))
