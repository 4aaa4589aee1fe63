"""The site in a real browser: Chromium, driven by Playwright, against daphne and a django-q2
cluster sharing the test database. An instructor signs in, uploads several files at once and
watches them become ready without reloading; learners and other instructors stay out."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from knowledge import services
from knowledge.models import Course, Enrollment
from tests.conftest import kill_group
from tests.site import browser
from tests.site.browser import shot, sign_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not browser.CHROMIUM.exists(),
        reason=f"no Chromium at {browser.CHROMIUM}: install Debian's chromium package",
    ),
]

PASSWORD = "tide-pool-lantern-42"
WAIT_MS = 15_000  # any single page step
READY_WAIT_MS = 90_000  # the cluster starts, loads the embedding model and ingests

# Original course material, small enough to ingest in a few seconds.
MATERIAL = {
    "priming-a-centrifugal-pump.md": """# Priming a centrifugal pump

A centrifugal pump moves liquid, not air. Before the first start, and after any repair that
opened the casing, the casing and the suction line must be full of liquid.

## Steps

1. Close the discharge valve so the pump starts against a closed outlet.
2. Open the vent screw on top of the casing.
3. Fill through the priming plug until liquid without bubbles runs out of the vent.
4. Close the vent, start the motor, then open the discharge valve slowly.

If the discharge pressure gauge stays near zero after start, stop at once: the pump is still
running dry and the mechanical seal faces will overheat within a minute.
""",
    "reading-a-seal-leak.txt": """Reading a mechanical seal leak

A few drops an hour at a mechanical seal are normal; the faces need a thin film of liquid to
stay cool. A steady stream is not. Note the leak rate at every round so a change stands out.

A leak that starts right after a dry run points to cracked or heat-checked faces. A leak that
grows slowly over weeks points to worn faces or a tired spring. A leak that comes and goes with
the discharge pressure points to a damaged secondary seal, the O-ring behind the stationary
face. Replace the whole cartridge rather than single parts when the plant keeps spares.
""",
    "cavitation-by-ear.md": """# Cavitation by ear

Cavitation sounds like gravel rattling through the pump. It happens when the pressure at the
impeller eye drops below the vapour pressure of the liquid: bubbles form and then collapse
against the vanes, pitting the metal.

Common causes are a clogged suction strainer, a partly closed suction valve, a liquid that
runs hotter than the design temperature, or a tank level that has fallen too low. Check them
in that order: the strainer is the quickest to clean and the most frequent culprit.
""",
}


@dataclass
class People:
    course: Course
    instructor: User
    learner: User
    outsider: User


def _person(username: str, course: Course, role: str) -> User:
    user = User.objects.create_user(username=username, first_name=username.split("-")[0].title())
    user.set_password(PASSWORD)
    user.save()
    services.enroll(course=course, user=user, role=role)
    if role == Enrollment.Role.INSTRUCTOR:
        services.make_instructor_staff(user=user)
    return user


@pytest.fixture
def people(transactional_db: None) -> People:
    """Committed, so the server and the cluster (other processes) see them."""
    course = services.create_course(
        slug="centrifugal-pumps",
        title="Centrifugal pumps: priming, sealing and cavitation",
        description="Keeping the plant's water and coolant pumps running.",
    )
    other = services.create_course(slug="boiler-water", title="Boiler water treatment")
    return People(
        course=course,
        instructor=_person("ines-instructor", course, Enrollment.Role.INSTRUCTOR),
        learner=_person("lars-learner", course, Enrollment.Role.LEARNER),
        outsider=_person("olga-otherteacher", other, Enrollment.Role.INSTRUCTOR),
    )


@pytest.fixture
def server(process_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """daphne, as the Procfile runs it, on the test database; its base URL."""
    process, base = browser.start_server(process_env, tmp_path / "daphne.log")
    yield base
    kill_group(process, signal.SIGTERM)


@pytest.fixture
def chromium(people: People) -> Iterator[Browser]:
    # The test database is written (people) before the browser starts: once Playwright's sync
    # API runs, its event loop would make Django's ORM in this process refuse or open a second
    # connection. After that the tests read the server's state through the browser only.
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(browser.CHROMIUM), args=browser.LAUNCH_ARGS
        )
        yield instance
        instance.close()


def _context(chromium: Browser, base: str, **options: Any) -> BrowserContext:
    context = chromium.new_context(base_url=base, **options)
    context.set_default_timeout(WAIT_MS)
    return context


def _badges(page: Page) -> list[str]:
    return [text.strip() for text in page.locator("#result_list .doc-status").all_inner_texts()]


def test_an_instructor_uploads_material_and_watches_it_become_ready(
    people: People,
    server: str,
    start_cluster: Any,
    chromium: Browser,
    tmp_path: Path,
) -> None:
    files = []
    for name, text in MATERIAL.items():
        (tmp_path / name).write_text(text)
        files.append(tmp_path / name)
    titles = [services.title_from_filename(name) for name in MATERIAL]

    context = _context(chromium, server, viewport={"width": 1280, "height": 900})
    page = context.new_page()

    # Signed out, the home page sends to the sign-in page.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # A wrong password is refused with a message, announced to screen readers.
    page.get_by_label("Username").fill(people.instructor.username)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    expect(page.get_by_label("Username")).to_have_value(people.instructor.username)
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(re.compile(r"/login/$"))
    shot(page, "login-error")

    # The right one leads home: the course, the role, and the way to upload.
    sign_in(page, people.instructor.username, PASSWORD)
    expect(page).to_have_url(server + "/")
    card = page.locator(".courses .card").filter(has_text=people.course.title)
    expect(card).to_have_count(1)
    expect(card.locator(".meta")).to_contain_text("Instructor")
    expect(card.locator(".meta")).to_contain_text("0 of 0 documents ready")
    upload_link = card.get_by_role("link", name="Upload material")
    expect(upload_link).to_be_visible()
    shot(page, "home")

    # Upload several files at once.
    upload_link.click()
    expect(page).to_have_url(re.compile(r"/admin/knowledge/document/upload/$"))
    expect(page.get_by_role("heading", name="Upload course material")).to_be_visible()
    page.get_by_label("Course").select_option(label=people.course.title)
    file_input = page.locator("input[type=file][name=documents]")
    expect(file_input).to_have_attribute("multiple", "")
    file_input.set_input_files([str(path) for path in files])
    assert file_input.evaluate("input => input.files.length") == len(files)
    shot(page, "upload")
    page.get_by_role("button", name="Upload").click()

    # The document list, filtered on the course, one row per file; nothing ingests them yet,
    # so every row is pending when the page arrives.
    expect(page).to_have_url(
        re.compile(rf"/admin/knowledge/document/\?course__id__exact={people.course.pk}$")
    )
    for name in MATERIAL:
        expect(page.locator("ul.messagelist")).to_contain_text(f"{name}: queued for ingestion.")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(len(MATERIAL))
    for title in titles:
        expect(rows.filter(has_text=title)).to_have_count(1)
    assert _badges(page) == ["Pending"] * len(MATERIAL)
    for title in titles:
        expect(rows.filter(has_text=title).locator(".doc-progress span")).to_have_text(
            "0 / ? chunks"
        )

    # From here on the page must update itself: mark this document, watch for navigations and
    # record every badge text the polling script writes.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.evaluate(
        """() => {
            window.__sameDocument = true;
            window.__seen = [];
            new MutationObserver(() => {
                document.querySelectorAll('#result_list .doc-status')
                    .forEach((badge) => window.__seen.push(badge.textContent.trim()));
            }).observe(document.querySelector('#result_list'),
                       {subtree: true, childList: true, characterData: true});
        }"""
    )

    # One worker: it alone imports torch and loads the embedding model, then takes the three
    # small files in turn; two would compete for the CPU while they start.
    cluster = start_cluster(TUTOR_Q_WORKERS="1")
    try:
        page.wait_for_function(
            """(count) => {
                const badges = [...document.querySelectorAll('#result_list .doc-status')];
                return badges.length === count
                    && badges.every((badge) => badge.textContent.trim() === 'Ready');
            }""",
            arg=len(MATERIAL),
            timeout=READY_WAIT_MS,
            polling=250,
        )
    except PlaywrightError as exc:
        raise AssertionError(
            f"badges never all turned Ready: {_badges(page)} (cluster running: "
            f"{cluster.poll() is None})\n{browser.tail(tmp_path / 'cluster-0.log')}"
        ) from exc
    browser.stop_cluster(cluster)  # its work is done; the fixture's stop is then a no-op

    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert navigations == [], f"the page navigated: {navigations}"
    seen = page.evaluate("window.__seen")
    assert "Ready" in seen, f"the badges were not updated in place: {seen}"

    # Every counter reads "N / N chunks", N as the server has it, and every bar is full.
    response = page.request.get(f"/api/courses/{people.course.slug}/documents/")
    assert response.ok, response.text()
    documents = {document["title"]: document for document in response.json()}
    assert sorted(documents) == sorted(titles)
    for title in titles:
        document = documents[title]
        assert document["status"] == "ready", document
        total = document["chunks_total"]
        assert total >= 1, document
        row = rows.filter(has_text=title)
        expect(row.locator(".doc-progress span")).to_have_text(f"{total} / {total} chunks")
        assert row.locator("progress").evaluate("bar => bar.value") == 100
        expect(row.locator(".doc-status")).to_have_class(re.compile(r"\bdoc-status-ready\b"))
    # Status and progress are in view beside the filters, without scrolling sideways.
    results_right = page.locator("#changelist .results").evaluate(
        "box => box.getBoundingClientRect().right"
    )
    for cell in ["td.field-status_badge", "td.field-progress_bar"]:
        box = rows.first.locator(cell).bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= results_right + 1, f"{cell} is cut off"
    shot(page, "documents-ready")

    # Home now counts them as ready.
    page.goto("/")
    expect(card.locator(".meta")).to_contain_text(
        f"{len(MATERIAL)} of {len(MATERIAL)} documents ready"
    )
    context.close()

    # A learner of the course does not get into the back office.
    learner = _context(chromium, server).new_page()
    learner.goto("/login/")
    sign_in(learner, people.learner.username, PASSWORD)
    learner_card = learner.locator(".courses .card").filter(has_text=people.course.title)
    expect(learner_card.locator(".meta")).to_contain_text("Learner")
    expect(learner.get_by_role("link", name="Upload material")).to_have_count(0)
    expect(learner.get_by_role("link", name="Back office")).to_have_count(0)
    for path in ["/admin/", f"/admin/knowledge/document/?course__id__exact={people.course.pk}"]:
        learner.goto(path)
        expect(learner).to_have_url(re.compile(r"/admin/login/\?next="))
        expect(learner.locator("body")).to_contain_text("not authorized to access this page")
        expect(learner.locator("#result_list")).to_have_count(0)
        for title in titles:
            expect(learner.get_by_text(title)).to_have_count(0)
    shot(learner, "learner-refused")
    learner.context.close()

    # The instructor of another course sees the document list, without this course's documents.
    outsider = _context(chromium, server).new_page()
    outsider.goto("/login/")
    sign_in(outsider, people.outsider.username, PASSWORD)
    for path in [
        "/admin/knowledge/document/",
        f"/admin/knowledge/document/?course__id__exact={people.course.pk}",
    ]:
        outsider.goto(path)
        expect(outsider.get_by_role("heading", name="Select document to change")).to_be_visible()
        for title in titles:
            expect(outsider.get_by_text(title)).to_have_count(0)
        expect(outsider.locator("#result_list .doc-status")).to_have_count(0)
    one = documents[titles[0]]
    outsider.goto(f"/admin/knowledge/document/{one['id']}/change/")
    expect(outsider.get_by_text(one["title"], exact=True)).to_have_count(0)
    expect(outsider.locator("input[name=title]")).to_have_count(0)
    response = outsider.request.get(f"/api/documents/{one['id']}/")
    assert response.status == 403, response.text()
    outsider.context.close()


def test_sign_in_works_by_keyboard_and_the_home_page_fits_a_phone(
    people: People, server: str, chromium: Browser
) -> None:
    context = _context(chromium, server, viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.goto("/login/")
    assert browser.horizontal_overflow(page) == 0

    # The username field has the focus on arrival; Tab reaches the password; Enter submits.
    username = page.get_by_label("Username")
    expect(username).to_be_focused()
    username.focus()
    page.keyboard.type(people.instructor.username)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(server + "/")
    expect(page.get_by_role("heading", name="Your courses")).to_be_visible()
    expect(page.get_by_role("link", name="Upload material")).to_be_visible()

    # At phone width nothing scrolls sideways.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the home page is {width}px wide in a 375px window"
    shot(page, "home-phone")

    # Tab from the top reaches the upload link, and Enter follows it.
    page.keyboard.press("Tab")
    for _ in range(12):
        if page.evaluate("document.activeElement.textContent.trim()") == "Upload material":
            break
        page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Upload material")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/knowledge/document/upload/$"))
    assert browser.horizontal_overflow(page) == 0
    shot(page, "upload-phone")
    context.close()
