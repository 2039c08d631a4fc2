"""The web page in a real headless browser (Debian's chromium, driven by selenium): search by an image, see the
neighbours' thumbnails, review duplicate groups and record a decision that lasts. Skipped, saying why, where no
browser is installed (.ci/run installs it). With $SIMSEARCH_SCREENSHOTS set, the pages are saved there as PNG."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import invoke, photo

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no headless browser: apt-get install chromium "
                                                                  "chromium-driver (.ci/run does)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="the server's extra is not installed: pip install -e '.[server]'")

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from server.app import create_app  # noqa: E402

WAIT_SECONDS = 30


@pytest.fixture
def indexed(tmp_path: Path, tiny_model_file: Path, make_photos) -> Path:  # type: ignore[no-untyped-def]
    """The folder of an index `idx` of photos `p`: six, a larger copy of the first and an exact copy of that."""
    make_photos(tmp_path / "p", 6)
    photo(0, (96, 72)).save(tmp_path / "p" / "big.png")  # img0000.png, larger: a near duplicate
    (tmp_path / "p" / "copy.png").write_bytes((tmp_path / "p" / "big.png").read_bytes())  # an exact copy
    assert invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0",
                  cwd=tmp_path).exit_code == 0
    return tmp_path


@contextmanager
def serving(root: Path, token: str | None = None) -> Iterator[str]:
    """The URL of the index at `root / "idx"` served on loopback (with `token`) while the block runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(root / "idx", token=token), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_SECONDS)


@pytest.fixture
def site(indexed: Path) -> Iterator[tuple[str, Path]]:
    with serving(indexed) as url:
        yield url, indexed


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    profile = tempfile.mkdtemp(prefix="simsearch-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    folder = os.environ.get("SIMSEARCH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_search_by_an_image_shows_the_nearest_with_thumbnails(site: tuple[str, Path], browser: webdriver.Chrome
                                                              ) -> None:
    url, root = site
    browser.get(url)
    search_and_see_thumbnails(browser, root)
    screenshot(browser, "search")


def test_with_a_token_the_page_sends_it_in_a_header(indexed: Path, browser: webdriver.Chrome) -> None:
    with serving(indexed, token="s3cret") as url:
        browser.get(url + "/#token=s3cret")  # a fragment: never sent to the server
        search_and_see_thumbnails(browser, indexed)
        sources = browser.execute_script("return [...document.querySelectorAll('#results img')].map(i => i.src)")
        assert all(source.startswith("blob:") for source in sources), "no token in an image's URL"


def search_and_see_thumbnails(browser: webdriver.Chrome, root: Path) -> None:
    """Pick an image on the search tab: its nearest show, with thumbnails (never the full file)."""
    browser.find_element(By.ID, "file").send_keys(str(root / "p" / "img0003.png"))
    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results figure")) >= 3)
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#results figcaption")]
    # The upload is embedded again, not the stored vector: its distance to itself is 0 to the 4 decimals shown.
    assert captions[0].startswith("#1 0.0000") and captions[0].endswith("img0003.png")
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
    widths = browser.execute_script("return [...document.querySelectorAll('#results img')].map(i => i.naturalWidth)")
    assert max(widths) <= 256, "thumbnails, never the full file"


def test_duplicate_groups_and_a_not_duplicates_decision_that_lasts(site: tuple[str, Path],
                                                                  browser: webdriver.Chrome) -> None:
    from retrieval.index import open_index

    url, root = site
    browser.get(url)
    browser.find_element(By.ID, "tab-duplicates").click()
    threshold = browser.find_element(By.ID, "threshold")
    threshold.send_keys("0.05")
    browser.find_element(By.ID, "refresh").click()
    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".group figure"))
    group = browser.find_element(By.CSS_SELECTOR, ".group")
    assert "weakest link" in group.find_element(By.TAG_NAME, "h3").text
    assert "exact copy" in group.text
    screenshot(browser, "duplicates")
    [near] = [f for f in browser.find_elements(By.CSS_SELECTOR, "figure") if "near duplicate" in f.text]
    near.find_element(By.CSS_SELECTOR, "button.keep").click()  # keep the smaller one instead, by its content
    wait.until(lambda d: "by chosen" in d.find_element(By.CSS_SELECTOR, ".group h3").text)
    assert browser.find_element(By.CSS_SELECTOR, ".group h3").text.startswith(f"keep {root / 'p' / 'img0000.png'}")
    near = next(f for f in browser.find_elements(By.CSS_SELECTOR, "figure") if "near duplicate" in f.text)
    target = near.find_element(By.CSS_SELECTOR, "button.decide")
    target.click()
    wait.until(lambda d: "recorded" in target.text)
    assert len(open_index(root / "idx").store.distinct_pairs()) == 1
    browser.find_element(By.ID, "refresh").click()
    wait.until(lambda d: "groups at threshold" in d.find_element(By.ID, "dup-summary").text)
    assert all("img0000.png" not in f.text for f in browser.find_elements(By.CSS_SELECTOR, ".group figure")), \
        "the content decided apart from the keeper's does not come back"
