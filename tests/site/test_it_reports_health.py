"""/healthz tells an operator (or a load balancer) whether the database, the queue and the
models are there, and answers 503 when the database is not."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.conftest import ROOT, wait_for
from tests.site.conftest import child_env, free_port, stop_cluster


def _health(client: Client) -> dict[str, Any]:
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    return response.json()


def test_it_reports_every_part_healthy(db: None, client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    body = response.json()
    assert body["status"] == "ok"

    database = body["database"]
    assert database["ok"] is True
    assert re.match(r"\d+", database["server"]), database
    assert re.match(r"\d+\.\d+", database["pgvector"]), database

    queue = body["queue"]
    assert queue["ok"] is True
    assert queue["broker"] == "orm"
    assert isinstance(queue["clusters"], int) and isinstance(queue["queued"], int)

    embedding, llm = body["models"]["embedding"], body["models"]["llm"]
    assert embedding["ok"] is True
    assert (Path(embedding["path"]) / "config.json").exists()
    assert llm["ok"] is True
    assert llm["path"].endswith(".gguf") and Path(llm["path"]).is_file()


@pytest.mark.slow
def test_it_sees_the_cluster_come_and_go(
    process_env: dict[str, str], start_cluster: Any, client: Client
) -> None:
    # The cluster saves its stats through the Django cache (the `tutor_cache` table here);
    # this process reads them from there.
    cluster = start_cluster(TUTOR_Q_WORKERS="1")

    def reported() -> bool:
        queue = _health(client)["queue"]
        return queue["clusters"] == 1 and queue["workers"] == 1  # the one we started

    wait_for(reported, 60, "/healthz to see the cluster and its one worker")

    stop_cluster(cluster)
    wait_for(lambda: _health(client)["queue"]["clusters"] == 0, 30, "/healthz to see it stopped")


FAULT_PROBE = """
import json
from django.test import Client
response = Client().get("/healthz")
print(json.dumps({"status": response.status_code, "body": response.json()}))
"""


def test_it_answers_503_without_its_database() -> None:
    # Nothing listens on this port: the database is unreachable, as after a crash.
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/tutor"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", FAULT_PROBE],
        cwd=ROOT,
        env=child_env(DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 503
    body = report["body"]
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is False
    assert body["database"]["error"]  # says why
    assert body["queue"]["ok"] is False
    # The rest of the report still comes, so the operator sees what else is fine.
    assert body["models"]["embedding"]["ok"] is True
