"""End to end: the sample's dev server in headless Chromium.

Collected only with ``RELAYCACHE_TEST_E2E=1`` (see ``conftest.py``); CI's
real-services leg sets it after installing Debian's ``chromium`` and
``chromium-driver`` and the ``e2e`` extra (selenium). When collected, a missing
browser or selenium is a failure, never a skip.

The server is ``manage.py runserver --noreload`` on a free 127.0.0.1 port, on a
temporary SQLite database seeded with 200 books. Its cache is Redis when
``RELAYCACHE_TEST_REDIS_URL`` is set (as ``RELAYCACHE_URL``), the embedded
``InMemoryCache`` otherwise.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .support import MANAGE, REDIS_URL, ROOT, free_port, manage, sample_env

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BOOKS = 200
PER_PAGE = 25


def _wait_until_serving(proc: subprocess.Popen, base_url: str, log: Path) -> None:
    # /admin/login/ touches no cache: the first visit of a cached page stays a miss.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runserver exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(base_url + "/admin/login/", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"runserver did not answer within 60 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def sample_server(tmp_path_factory):
    """(base URL, SQLite path) of a seeded sample running under runserver."""
    tmp = tmp_path_factory.mktemp("e2e")
    db_path = tmp / "db.sqlite3"
    env = sample_env(sqlite_path=db_path)
    manage("migrate", "--no-input", env=env)
    manage("seed_books", "--books", str(BOOKS), "--no-progress", env=env)
    # seed_books writes with bulk_create, which sends no signal: entries of the tagged
    # services left in Redis by an earlier run would survive it. Start empty.
    manage("shell", "-c", "from django.conf import settings; settings.CACHE_BACKEND.clear()",
           env=env)

    log = tmp / "runserver.log"
    for _attempt in range(3):  # the free port may be taken between check and bind
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{port}"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_until_serving(proc, base_url, log)
            break
        except RuntimeError:
            proc.terminate()
            proc.wait(10)
            if "already in use" not in log.read_text():
                raise
    else:
        raise RuntimeError(f"no free port for runserver:\n{log.read_text()}")
    try:
        yield base_url, db_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"RELAYCACHE_TEST_E2E=1 needs {', '.join(missing)}: "
                    "apt-get install -y chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail('RELAYCACHE_TEST_E2E=1 needs selenium: pip install -e ".[e2e]"')

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _badge(driver) -> str:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, "cache-badge")
    assert element.text == element.get_attribute("class").split()[-1]
    assert re.fullmatch(r"[0-9]+\.[0-9]{2} ms", _text(driver, "#cache-time"))
    return element.text


def _titles_in_genre(db_path: Path, slug: str) -> list[str]:
    """What the genre's first page must list: the database's own answer, read with
    sqlite3."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT b.title FROM books_book b JOIN books_bookgenre bg ON bg.book_id = b.id "
            "JOIN books_genre g ON g.id = bg.genre_id WHERE g.slug = ? "
            "ORDER BY b.title, b.id LIMIT ?", (slug, PER_PAGE)).fetchall()
    return [title for (title,) in rows]


def _book_in_db(db_path: Path, book_id: int) -> tuple[str, bool]:
    with sqlite3.connect(db_path) as db:
        title, featured = db.execute("SELECT title, is_featured FROM books_book WHERE id = ?",
                                     (book_id,)).fetchone()
    return title, bool(featured)


def _reads(driver) -> list[tuple[str, str]]:
    """(outcome, read) of each row of the page's cached-reads table."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#cached-queries tr.read")
    return [(row.find_element(By.CSS_SELECTOR, ".badge").text,
             row.find_elements(By.TAG_NAME, "td")[1].text) for row in rows]


def test_browse_genres_in_chromium(sample_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base_url, db_path = sample_server
    wait = WebDriverWait(browser, 20)

    browser.get(base_url + "/")
    assert browser.title == "Genres · RelayCache sample"
    assert _text(browser, "h1") == "Genres"
    assert _badge(browser) == "miss"
    browser.refresh()
    assert _badge(browser) == "hit"

    entries = []
    for item in browser.find_elements(By.CSS_SELECTOR, "#genres li"):
        link = item.find_element(By.TAG_NAME, "a")
        count = int(re.fullmatch(r".* \((\d+)\)", item.text)[1])
        entries.append((link.text, link.get_attribute("href").rstrip("/").rsplit("/", 1)[1],
                        count))
    assert len(entries) == 50  # seed_books' default: one genre per name
    assert sum(count for *_, count in entries) >= BOOKS
    with_books = [entry for entry in entries if entry[2] > 0]
    chosen = [with_books[0], with_books[len(with_books) // 2], with_books[-1]]

    for name, slug, count in chosen:
        browser.find_element(By.LINK_TEXT, name).click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "genre-name"), name))
        assert browser.current_url == f"{base_url}/genre/{slug}/"
        assert browser.title == f"{name} · RelayCache sample"
        assert _text(browser, "#genre-name") == name
        assert _badge(browser) == "miss"

        rows = browser.find_elements(By.CSS_SELECTOR, "#books tr")[1:]  # after the header
        titles = [row.find_elements(By.TAG_NAME, "td")[0].text for row in rows]
        assert len(rows) == min(count, PER_PAGE)
        assert all(len(row.find_elements(By.TAG_NAME, "td")) == 4 for row in rows)
        assert all(cell.text for row in rows
                   for cell in row.find_elements(By.TAG_NAME, "td")[:3])
        assert titles == _titles_in_genre(db_path, slug)
        assert browser.find_elements(By.CSS_SELECTOR, "#featured li")

        browser.refresh()
        wait.until(ec.presence_of_element_located((By.ID, "cache-badge")))
        assert _badge(browser) == "hit"
        assert [row.find_elements(By.TAG_NAME, "td")[0].text for row in
                browser.find_elements(By.CSS_SELECTOR, "#books tr")[1:]] == titles

        browser.find_element(By.LINK_TEXT, "All genres").click()
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Genres"))
        assert _badge(browser) == "hit"  # reading genre pages invalidated nothing

    if REDIS_URL:
        # Another process writes (a manage.py shell, as a cron job would): through
        # Redis, the server's next read of that page is fresh.
        name, slug, _ = chosen[0]
        first = _titles_in_genre(db_path, slug)[0]
        code = ("from books.models import Book; "
                f"b = Book.objects.filter(genres__genre__slug={slug!r}, title={first!r})"
                ".first(); b.title = '0 renamed in another process'; b.save()")
        manage("shell", "-c", code, env=sample_env(sqlite_path=db_path))
        browser.get(f"{base_url}/genre/{slug}/")
        assert _badge(browser) == "miss"
        assert browser.find_elements(By.CSS_SELECTOR, "#books tr td")[0].text == (
            "0 renamed in another process")
        browser.refresh()
        assert _badge(browser) == "hit"



def test_edit_round_trip_in_chromium(sample_server, browser):
    """Open a book from its genre page, edit it in the form, save: the page it lands
    on misses and shows the new title, a reload hits, and the genre page (the link on
    the book page leads to the page and row of the book) shows the edit too."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base_url, db_path = sample_server
    # While a form's POST navigates, Chromium may answer a lookup with "node does not
    # belong to the document": look again until the new page is there.
    wait = WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,))
    with sqlite3.connect(db_path) as db:
        (slug,) = db.execute(
            "SELECT g.slug FROM books_genre g JOIN books_bookgenre bg ON bg.genre_id = g.id "
            "GROUP BY g.id ORDER BY COUNT(*) DESC, g.slug LIMIT 1").fetchone()

    browser.get(f"{base_url}/genre/{slug}/")
    last_row = browser.find_elements(By.CSS_SELECTOR, "#books tr")[-1]
    link = last_row.find_element(By.TAG_NAME, "a")
    old_title = link.text
    book_id = int(last_row.get_attribute("id").removeprefix("book-"))
    _, was_featured = _book_in_db(db_path, book_id)
    link.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "book-title"), old_title))
    book_url = f"{base_url}/book/{book_id}/"
    assert browser.current_url == book_url
    assert "A demo: anyone can edit here" in _text(browser, ".demo")
    assert "createsuperuser" in _text(browser, "#footer")
    browser.refresh()
    wait.until(ec.presence_of_element_located((By.ID, "cache-badge")))
    assert _badge(browser) == "hit"
    assert {outcome for outcome, _ in _reads(browser)} == {"hit"}

    new_title = "0 Edited in Chromium"
    field = browser.find_element(By.ID, "id_title")
    field.clear()
    field.send_keys(new_title)
    browser.find_element(By.ID, "id_is_featured").click()  # toggle
    browser.find_element(By.ID, "save-book").click()

    # POST, redirect, GET: the same page, a miss, the new values and why.
    wait.until(ec.text_to_be_present_in_element((By.ID, "book-title"), new_title))
    assert browser.current_url == book_url
    assert _text(browser, "#book-title") == new_title
    assert _text(browser, "#book-featured") == ("no" if was_featured else "yes")
    assert browser.find_element(By.ID, "id_title").get_attribute("value") == new_title
    assert _badge(browser) == "miss"
    message = _text(browser, "#messages")
    assert message.startswith(f"Saved \u201c{new_title}\u201d. The write invalidated ")
    assert "table:default:books_book" in message and f"book:{book_id}" in message
    reads = _reads(browser)
    assert reads[0][0] == "miss" and "books_book" in reads[0][1]
    assert ("miss", f"@cache get_book_details({book_id})") in reads
    assert _book_in_db(db_path, book_id) == (new_title, not was_featured)

    # Reload: all hits, the message gone, the new title still there.
    browser.refresh()
    wait.until(ec.presence_of_element_located((By.ID, "cache-badge")))
    assert _badge(browser) == "hit"
    assert {outcome for outcome, _ in _reads(browser)} == {"hit"}
    assert not browser.find_elements(By.ID, "messages")
    assert _text(browser, "#book-title") == new_title

    # The genre link leads to the page and row of the book: a miss, the new title
    # first (it sorts first now), then a hit.
    browser.find_element(By.CSS_SELECTOR, f'#book-genres a[href^="/genre/{slug}/"]').click()
    wait.until(ec.presence_of_element_located((By.ID, f"book-{book_id}")))
    assert browser.current_url == f"{base_url}/genre/{slug}/?page=1#book-{book_id}"
    assert _badge(browser) == "miss"
    first = browser.find_elements(By.CSS_SELECTOR, "#books tr")[1]
    assert first.get_attribute("id") == f"book-{book_id}"
    assert first.find_elements(By.TAG_NAME, "td")[0].text == new_title
    assert first.find_elements(By.TAG_NAME, "td")[3].text == ("" if was_featured else "\u2605")
    assert _titles_in_genre(db_path, slug)[0] == new_title
    browser.refresh()
    wait.until(ec.presence_of_element_located((By.ID, "cache-badge")))
    assert _badge(browser) == "hit"
