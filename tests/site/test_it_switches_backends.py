"""DATABASE_URL and REDIS_URL move the tutor to another database, channel layer, cache and
queue broker: each test runs the real commands in a child process and looks at where their
writes landed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest
from django_q.models import OrmQ, Task

from knowledge import services
from knowledge.models import Chunk, Document
from tests.conftest import ROOT, wait_for
from tests.site.conftest import child_env, server_params, stop_cluster, url_for_database


def _manage(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_database_url_points_every_command_at_that_database() -> None:
    name = f"tutor_url_test_{os.getpid()}"
    with psycopg.connect(**server_params(), dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = child_env(DATABASE_URL=url_for_database(name))
        done = _manage(["migrate", "--noinput"], env, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        asked = _manage(
            [
                "shell",
                "-c",
                "from django.db import connection as c; "
                "print(c.cursor().execute('SELECT current_database()').fetchone()[0])",
            ],
            env,
            timeout=60,
        )
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip().splitlines()[-1] == name

        with psycopg.connect(**server_params(), dbname=name) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            }
            assert {"knowledge_document", "knowledge_chunk", "django_q_ormq"} <= tables
            vector = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            assert vector is not None, "pgvector was not installed in the DATABASE_URL database"
            sweep = conn.execute(
                "SELECT func FROM django_q_schedule WHERE name LIKE 'knowledge:%'"
            ).fetchall()
            assert sweep == [("knowledge.tasks.requeue_stalled",)]
    finally:
        with psycopg.connect(**server_params(), dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PROBE = """
import asyncio, json
from channels.layers import get_channel_layer
from django.core.cache import cache
from django_q.brokers import get_broker

layer = get_channel_layer()
token = {token!r}

async def main():
    # to a named channel, and to a group whose member is a named channel
    await layer.send("tutor-probe.direct", {{"type": "probe.direct", "token": token}})
    await layer.group_add("tutor-probe-group", "tutor-probe.grouped")
    await layer.group_send("tutor-probe-group", {{"type": "probe.group", "token": token}})

asyncio.run(main())
cache.set("tutor-probe", token, 60)
print(json.dumps({{
    "layer": type(layer).__module__ + "." + type(layer).__qualname__,
    "broker": type(get_broker()).__module__,
}}))
"""


async def _receive(url: str, channel: str) -> dict[str, Any]:
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[url])
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout=10)
    finally:
        await layer.close_pools()


def test_redis_url_carries_channel_messages_and_the_cache(redis_url: str) -> None:
    import redis

    token = uuid.uuid4().hex
    done = _manage(
        ["shell", "-c", PROBE.format(token=token)], child_env(REDIS_URL=redis_url), timeout=90
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "layer": "channels_redis.core.RedisChannelLayer",
        "broker": "django_q.brokers.redis_broker",
    }
    # This process reads, from Redis itself, what the child wrote.
    direct = asyncio.run(_receive(redis_url, "tutor-probe.direct"))
    assert direct == {"type": "probe.direct", "token": token}
    grouped = asyncio.run(_receive(redis_url, "tutor-probe.grouped"))
    assert grouped == {"type": "probe.group", "token": token}
    keys = redis.Redis.from_url(redis_url).keys("*tutor-probe")
    assert keys, "the cache did not write to REDIS_URL"


@pytest.mark.slow
def test_the_cluster_takes_work_from_redis(
    process_env: dict[str, str], start_cluster: Any, redis_url: str, tmp_path: Any
) -> None:
    import redis

    course = services.create_course(slug="redis-course", title="Redis course")
    cluster = start_cluster(REDIS_URL=redis_url, TUTOR_Q_WORKERS="1")
    client = redis.Redis.from_url(redis_url)
    wait_for(
        lambda: bool(client.keys("django_q:tutor:cluster:*")),
        60,
        "the cluster to report itself in Redis",
    )

    material = tmp_path / "belt-tension.md"
    material.write_text(
        "# Belt tension\n\nA conveyor belt that slips on the drive pulley is too slack: "
        "tighten the take-up screws a quarter turn each side, run the belt for five minutes "
        "and measure the deflection again at mid-span.\n\n## Tracking\n\nA belt that runs "
        "to one side is trued at the tail pulley, never by forcing the edge with a guide.\n"
    )
    env = {**process_env, "REDIS_URL": redis_url}
    done = _manage(
        ["ingest", str(material), "--course", course.slug, "--wait", "--timeout", "120"],
        env,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no background cluster" not in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ready"] == 1, summary

    document = Document.objects.get(course=course)
    assert document.status == Document.Status.READY
    assert Chunk.objects.filter(document=document).count() == document.chunks_total > 0
    # It went through Redis, not the ORM queue: no row of the ORM broker ever named it ...
    assert not [task for task in OrmQ.objects.all() if task.args() == (document.pk,)]
    # ... and the cluster ran it (results are kept in the database whatever the broker).
    assert Task.objects.filter(name=f"ingest-document-{document.pk}", success=True).exists()
    stop_cluster(cluster)
