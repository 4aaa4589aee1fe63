"""The tutoring chat in a real browser: Chromium, driven by Playwright, against daphne and a real
inference worker process (the real GGUF model) sharing the test database. A learner signs in,
starts a conversation focused on a skill, asks by keyboard, watches the answer stream in with
its sources, opens a cited passage, answers the check question and sees the mastery meter move;
the page is kept as screenshots at desktop and phone width."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    WebSocket,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from knowledge import services
from knowledge.models import Enrollment, Skill
from learners.models import Item
from tests.conftest import IngestFn, kill_group, start_process, wait_for
from tests.site import browser
from tests.site.browser import shot, sign_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(360),
    pytest.mark.skipif(
        not browser.CHROMIUM.exists(),
        reason=f"no Chromium at {browser.CHROMIUM}: install Debian's chromium package",
    ),
]

PASSWORD = "kettle-harbour-quartz-17"
WAIT_MS = 15_000  # any single page step
FIRST_TOKEN_WAIT_MS = 90_000  # the server loads the embedding model, then the worker generates
ANSWER_WAIT_MS = 120_000  # the whole answer, saved, with its check question
WORKER_READY_SECONDS = 120
MODES = ("foundational", "scaffolded", "advanced")

QUESTION = "Why must the casing be full of liquid before a centrifugal pump starts?"
STEM = "What must fill the casing before a centrifugal pump starts?"
CHOICES = ["Air", "Liquid", "Grease"]

# Original course material, small enough to ingest in a few seconds.
MATERIAL = {
    "priming-the-transfer-pump.md": """# Priming the transfer pump

The impeller of a centrifugal pump throws liquid outwards; it cannot throw air. A casing full
of air gives no suction, so before the first start, and after any work that drained the
casing, the casing and the suction line must be filled with liquid.

## How to prime

1. Shut the discharge valve.
2. Open the air vent on top of the casing.
3. Pour liquid in through the priming cup until it comes out of the vent without bubbles.
4. Shut the vent, start the motor, and open the discharge valve a little at a time.

A pump that runs dry heats its mechanical seal within a minute: if the discharge gauge stays
at zero after start, stop the motor and prime again.
""",
    "seal-rounds.txt": """Seal rounds

Look at every mechanical seal on the daily round. A few drops an hour are normal: the seal
faces run on a thin film of liquid that keeps them cool. A steady trickle is not normal.
Write the leak rate in the log book so that a change over the weeks stands out.
""",
}
PRIMING_DOC = "priming-the-transfer-pump.md"


@dataclass(frozen=True)
class Scene:
    """What the browser needs, read before Playwright starts (no ORM after that)."""

    slug: str
    course_title: str
    username: str
    skill_id: int
    skill_name: str
    document_titles: tuple[str, ...]


@pytest.fixture
def scene(transactional_db: None, ingest: IngestFn) -> Scene:
    """Committed, so the server and the worker (other processes) see it."""
    course = services.create_course(
        slug="transfer-pumps",
        title="Transfer pumps: priming and seal care",
        description="Starting and looking after the plant's transfer pumps.",
    )
    priming = Skill.objects.create(
        course=course,
        name="Pump Priming",
        description="Fills a centrifugal pump's casing with liquid before it starts.",
    )
    Skill.objects.create(
        course=course, name="Seal Care", description="Reads the leak of a mechanical seal."
    )
    for name, text in MATERIAL.items():
        document = ingest(course, name, text.encode())
        assert document.status == "ready", (name, document.status, document.error)
    learner = User.objects.create_user(username="pia-learner", first_name="Pia")
    learner.set_password(PASSWORD)
    learner.save()
    services.enroll(course=course, user=learner, role=Enrollment.Role.LEARNER)
    # The only approved item of the skill, so the check question is this one.
    Item.objects.create(
        course=course,
        skill=priming,
        stem=STEM,
        choices=CHOICES,
        answer="Liquid",
        kind=Item.Kind.MULTIPLE_CHOICE,
        status=Item.Status.APPROVED,
    )
    return Scene(
        slug=course.slug,
        course_title=course.title,
        username=learner.username,
        skill_id=priming.pk,
        skill_name=priming.name,
        document_titles=tuple(services.title_from_filename(name) for name in MATERIAL),
    )


def _chat_env(process_env: dict[str, str]) -> dict[str, str]:
    return {
        **process_env,
        # Short answers, one llama.cpp thread (two spin against each other on two busy cores).
        "TUTOR_ANSWER_TOKENS": "48",
        "TUTOR_LLM_THREADS": "1",
        # A slow machine must not be taken for a dead worker.
        "TUTOR_WORKER_SILENCE_SECONDS": "90",
        "TUTOR_ANSWER_SECONDS": "90",
        # A channel of this test's own: no other test's worker or request meets it.
        "TUTOR_INFERENCE_CHANNEL": f"tutor.inference.browser{os.getpid()}",
    }


@pytest.fixture
def worker(scene: Scene, process_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """One `inference_worker` on the test's own channel (TUTOR_INFERENCE_CHANNEL, which the
    server process sends to as well) of the test database's channel layer."""
    log = tmp_path / "worker.log"
    process = start_process(
        [sys.executable, "manage.py", "inference_worker"], _chat_env(process_env), log
    )
    try:
        wait_for(
            lambda: (
                "ready on channel" in log.read_text(errors="replace") or process.poll() is not None
            ),
            WORKER_READY_SECONDS,
            "the inference worker",
        )
        assert process.poll() is None, browser.tail(log)
        yield log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        kill_group(process)


@pytest.fixture
def server(worker: Path, process_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """daphne, as the Procfile runs it, on the test database; its base URL."""
    process, base = browser.start_server(_chat_env(process_env), tmp_path / "daphne.log")
    yield base
    kill_group(process, signal.SIGTERM)


@pytest.fixture
def chromium(scene: Scene, server: str) -> Iterator[Browser]:
    # Everything is in the database (scene) before the browser starts: once Playwright's sync
    # API runs, its event loop would make Django's ORM in this process refuse or open a second
    # connection. After that the test reads the server's state through the browser only.
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(browser.CHROMIUM), args=browser.LAUNCH_ARGS
        )
        yield instance
        instance.close()


def _logs(tmp_path: Path) -> str:
    return "\n".join(browser.tail(tmp_path / name) for name in ("daphne.log", "worker.log"))


def _console(message: ConsoleMessage, problems: list[str]) -> None:
    """Record the page's console errors (a missing icon or asset counts too)."""
    if message.type != "error":
        return
    where = str(message.location.get("url", ""))
    problems.append(f"console: {message.text} at {where}")


def _assert_in_view(page: Page, locator: Locator) -> None:
    """The element is inside the transcript's visible area (it scrolls on a wide screen)."""
    page.wait_for_timeout(300)  # smooth or late scrolling settles
    box = locator.bounding_box()
    view = page.locator("#transcript").bounding_box()
    assert box is not None and view is not None
    assert box["y"] >= view["y"] - 1, f"{box} starts above the transcript's view {view}"
    bottom, view_bottom = box["y"] + box["height"], view["y"] + view["height"]
    assert bottom <= view_bottom + 1, f"{box} ends below the transcript's view {view}"


def _plain(text: str) -> str:
    """The words of a text, without Markdown heading marks, one space apart."""
    return " ".join(word for word in text.split() if not re.fullmatch(r"#+", word))


def _percent(page: Page, selector: str) -> int:
    text = page.locator(selector).inner_text().strip()
    found = re.fullmatch(r"(\d+)%", text)
    assert found is not None, f"{selector} reads {text!r}"
    return int(found.group(1))


def test_a_learner_asks_sees_the_answer_stream_and_moves_the_mastery_meter(
    scene: Scene, server: str, chromium: Browser, tmp_path: Path
) -> None:
    context = chromium.new_context(base_url=server, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: _console(message, problems))
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.url}") if response.status >= 400 else None
        ),
    )
    frames: list[dict[str, Any]] = []

    def watch(socket: WebSocket) -> None:
        def received(payload: str | bytes) -> None:
            with contextlib.suppress(ValueError):
                frames.append(json.loads(payload))

        socket.on("framereceived", received)

    page.on("websocket", watch)

    # Sign in and start a conversation focused on the skill from the course page.
    page.goto("/login/")
    sign_in(page, scene.username, PASSWORD)
    expect(page).to_have_url(server + "/")
    page.goto(f"/courses/{scene.slug}/")
    expect(page.get_by_role("heading", name=scene.course_title)).to_be_visible()
    page.get_by_label("Focus on a skill").select_option(label=scene.skill_name)
    page.get_by_role("button", name="Start a conversation").click()
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    expect(page.locator(".chat .meta").first).to_contain_text(f"Focused on {scene.skill_name}")
    expect(page.locator("#connection")).to_have_text("Connected", timeout=WAIT_MS)

    meter_value = f'#mastery .skill[data-skill="{scene.skill_id}"] .value'
    before = _percent(page, meter_value)

    # Record what the answer's text was each time it changed while it was still being written.
    page.evaluate(
        """() => {
            window.__whileBusy = [];
            window.__statuses = [];
            new MutationObserver(() => {
                const answer = document.querySelector('#transcript .answer');
                if (answer && answer.getAttribute('aria-busy') === 'true') {
                    window.__whileBusy.push(answer.querySelector('.text').textContent);
                    window.__statuses.push(answer.querySelector('.status').textContent);
                }
            }).observe(document.querySelector('#transcript'),
                       {subtree: true, childList: true, characterData: true});
        }"""
    )

    # Ask by keyboard: type into the composer, Enter sends.
    composer = page.locator("#question")
    expect(composer).to_have_accessible_description(re.compile("Enter sends"))
    composer.click()
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")
    # The question shows at once, as being sent; then as saved, once the server has retrieved
    # its passages (the first question of a server process also loads the embedding model).
    questions = page.locator("#transcript .question")
    expect(questions.locator(".text")).to_have_text(QUESTION)
    expect(questions).to_have_count(1)
    expect(page.locator("#transcript .question[id^='message-']")).to_have_count(
        1, timeout=FIRST_TOKEN_WAIT_MS
    )
    expect(questions).to_have_count(1)
    expect(questions.locator(".text")).to_have_text(QUESTION)
    expect(questions).not_to_have_class(re.compile(r"\bsending\b"))
    expect(composer).to_have_value("")
    answer = page.locator("#transcript .answer").first
    expect(answer).to_have_count(1)
    expect(page.locator("#stop")).to_be_enabled()

    # The text streams in: non-empty before the answer is finished.
    try:
        page.wait_for_function(
            "() => (window.__whileBusy || []).some((text) => text.trim().length > 0)",
            timeout=FIRST_TOKEN_WAIT_MS,
            polling=100,
        )
    except PlaywrightError as exc:
        raise AssertionError(f"no streamed text appeared\n{_logs(tmp_path)}") from exc
    try:
        expect(answer).to_have_attribute("aria-busy", "false", timeout=ANSWER_WAIT_MS)
    except AssertionError as exc:
        raise AssertionError(f"the answer never finished\n{_logs(tmp_path)}") from exc
    streamed = [frame for frame in frames if frame.get("type") == "token"]
    assert streamed, f"no token frames reached the page: {[f.get('type') for f in frames]}"
    assert answer.get_attribute("data-status") in ("complete", "length"), answer.inner_text()
    expect(answer.locator(".text")).to_have_text(re.compile(r"\S"))
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#send")).to_be_enabled()
    if any(frame.get("type") == "started" for frame in frames):
        # A worker took the question: the learner is told it is being read.
        statuses = page.evaluate("window.__statuses")
        assert any("reading your question" in status for status in statuses), statuses
    done = next(frame["message"] for frame in frames if frame.get("type") == "done")
    assert done["skill_id"] == scene.skill_id, done

    # The mode and why.
    badge = answer.locator(".badge")
    expect(badge).to_have_text(re.compile(rf"^({'|'.join(MODES)})$"))
    expect(answer.locator(".mode-reason")).to_have_text(re.compile(r"^pitched as "))
    expect(answer.locator(".mode-reason")).to_contain_text(scene.skill_name)
    # "From your course material" comes first: verbatim sentences with their citation buttons.
    expect(answer.locator(".extract .extract-title").first).to_have_text(
        "From your course material"
    )
    expect(answer.locator(".extract .quote .cite").first).to_be_visible()
    # Every sentence the model wrote was checked as it streamed; the page lists exactly those
    # not found in the material.
    marks = [mark for frame in frames if frame.get("type") == "support" for mark in frame["marks"]]
    assert marks and marks == done["support"], [f.get("type") for f in frames]
    # Each sentence not found is listed once, however often the model wrote it.
    missing = list(
        dict.fromkeys(mark["sentence"] for mark in done["support"] if not mark["supported"])
    )
    expect(answer.locator(".not-found li")).to_have_count(len(missing))
    if missing:
        expect(answer.locator(".not-found-title")).to_contain_text(
            "Not found in your course material"
        )
        first = answer.locator(".not-found li").first
        expect(first.locator(".said")).to_have_text(missing[0])
        # Why, in words, and (unless no passage speaks of it) the passage sentence it is about.
        why = first.locator(".why")
        expect(why).to_have_text(
            re.compile(r"the material (does not (give|say)|says the opposite)|no passage")
        )
        closest = next(mark["closest"] for mark in done["support"] if not mark["supported"])
        if "no passage" in why.inner_text():
            expect(first.locator(".closest")).to_have_count(0)
        else:
            expect(first.locator(".closest")).to_contain_text(closest)

    # Its sources: the priming notes are among them, and a click opens the passage.
    summaries = answer.locator(".citations summary")
    expect(summaries.first).to_be_visible()
    titles = [text.strip() for text in summaries.all_inner_texts()]
    priming_title = services.title_from_filename(PRIMING_DOC)
    assert any(priming_title in title for title in titles), titles
    for title in titles:
        assert re.match(r"^\[\d+\] ", title), title
        # The document once: a section path that starts with its title is not repeated.
        assert sum(title.count(name) for name in scene.document_titles) == 1, title
    cites = answer.locator(".text button.cite")
    if cites.count():
        # The model cited a passage in its text: [n] opens that source.
        number = cites.first.get_attribute("data-n")
        cites.first.click()
        source = answer.locator(f"details[id$='-{number}']")
    else:
        source = answer.locator(".citations details").filter(has_text=priming_title).first
        source.locator("summary").click()
    expect(source).to_have_attribute("open", "")
    passage = source.locator(".passage")
    expect(passage).to_be_visible()
    assert _plain(passage.inner_text())[:60] in _plain("\n".join(MATERIAL.values())), (
        passage.inner_text()
    )

    # The check question follows the answer: the approved item of the focus skill.
    check = page.locator("#transcript .check")
    expect(check).to_have_count(1, timeout=ANSWER_WAIT_MS)
    expect(check.locator(".stem")).to_have_text(STEM)
    expect(check.locator(".check-title")).to_contain_text(scene.skill_name)
    expect(check.locator("input[type=radio]")).to_have_count(len(CHOICES))
    assert _percent(page, meter_value) == before, "the meter moved before any answer"
    check.get_by_label("Liquid").check()
    check.get_by_role("button", name="Check answer").click()
    expect(check.locator(".verdict.right")).to_be_visible(timeout=WAIT_MS)
    expect(check.locator(".verdict")).to_contain_text("Right")
    # The transcript scrolls by itself: the grade is in view, not below its scrolled edge.
    _assert_in_view(page, check.locator(".verdict"))
    page.wait_for_function(
        "([selector, before]) => document.querySelector(selector).textContent.trim() !== before",
        arg=[meter_value, f"{before}%"],
    )
    after = _percent(page, meter_value)
    assert after > before, f"the mastery meter went from {before}% to {after}%"
    meter = page.locator(f'#mastery .skill[data-skill="{scene.skill_id}"] meter')
    assert meter.evaluate("meter => meter.value") == pytest.approx(after / 100, abs=0.006)
    expect(check.locator(".meta").last).to_contain_text(f"{before}% → {after}%")
    # The feedback quotes the material that holds the answer.
    expect(check.locator(".feedback .extract-title")).to_have_text("From your course material")
    expect(check.locator(".feedback .quote").first).to_contain_text("liquid")
    expect(check.locator("form")).to_have_count(0)

    assert problems == [], problems
    # The window as the learner has it first: a full-page capture grows the window for a moment,
    # and the transcript's own scrolling goes back to the top.
    browser.SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(browser.SHOTS / "chat-desktop-window.png"))
    desktop = shot(page, "chat-desktop")

    # At phone width the page fits: nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("() => window.innerWidth === 390")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the chat page is {overflow}px wider than a 390px window"
    expect(composer).to_be_visible()
    expect(page.locator(f'#mastery .skill[data-skill="{scene.skill_id}"]')).to_be_visible()
    phone = shot(page, "chat-phone")
    assert desktop.exists() and phone.exists()
    context.close()
