"""The web page in a real headless browser (Debian's chromium, driven by selenium): search by an image, see the
neighbours' thumbnails, review duplicate groups and record a decision that lasts. Skipped, saying why, where no
browser is installed (.ci/run installs it). With $SIMSEARCH_SCREENSHOTS set, the pages are saved there as PNG.
The review page's own tests (paging, compare, zoom, resolve and undo, keys, /docs) are in test_review_page.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import headless_chromium, invoke, photo, serving_in_thread

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
    with serving_in_thread(create_app(root / "idx", token=token), wait_seconds=WAIT_SECONDS) as url:
        yield url


@pytest.fixture
def site(indexed: Path) -> Iterator[tuple[str, Path]]:
    with serving(indexed) as url:
        yield url, indexed


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium(CHROMIUM, DRIVER, WAIT_SECONDS) as driver:  # type: ignore[arg-type]
        yield driver  # type: ignore[misc]


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
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results [data-image-id]")) >= 3)
    first = browser.find_element(By.CSS_SELECTOR, "#results [data-image-id]").text
    # The upload is embedded again, not the stored vector: its distance to itself is 0 to the 4 decimals shown.
    assert "#1" in first and "img0003.png" in first and "similarity 1.0000" in first
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
    browser.find_element(By.ID, "threshold").send_keys("0.05")
    browser.find_element(By.ID, "refresh").click()
    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".group-row"))
    browser.find_element(By.CSS_SELECTOR, ".group-row a").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".group-view .member"))
    head = browser.find_element(By.CSS_SELECTOR, ".group-head").text
    assert "weakest similarity" in head and "the keeper chosen by" in head
    assert "COPY" in browser.find_element(By.CSS_SELECTOR, ".group-view").text
    screenshot(browser, "duplicates")
    [near] = [f for f in browser.find_elements(By.CSS_SELECTOR, ".member") if "img0000.png" in f.text]
    near.find_element(By.CSS_SELECTOR, "button.keep-this").click()  # keep the smaller one instead, by its content
    wait.until(lambda d: "your choice" in d.find_element(By.CSS_SELECTOR, ".group-head").text)
    keeper = browser.find_element(By.CSS_SELECTOR, ".member.keeper")
    assert "img0000.png" in keeper.text and f"{root / 'p' / 'img0000.png'}" == keeper.find_element(
        By.CSS_SELECTOR, ".name").get_attribute("title")
    other = browser.find_element(By.CSS_SELECTOR, ".member:not(.keeper) button.not-duplicate")
    other.click()
    wait.until(lambda d: "not a duplicate of the keeper" in d.find_element(By.ID, "dup-status").text)
    assert len(open_index(root / "idx").store.distinct_pairs()) == 1
    browser.find_element(By.ID, "refresh").click()
    wait.until(lambda d: "groups at threshold" in d.find_element(By.ID, "dup-summary").text
               or "group at threshold" in d.find_element(By.ID, "dup-summary").text)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".group-row"))
    assert all("img0000.png" not in f.get_attribute("title")
               for f in browser.find_elements(By.CSS_SELECTOR, ".group-row [data-image-id]")), \
        "the content decided apart from the keeper's does not come back"
