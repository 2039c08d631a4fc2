"""The review page (issue 26) in headless Chromium, one server and one browser for the module: paging past 100
groups with the API's count, compare and zoom, keyboard decisions, resolve then undo (from the page and with
`simsearch undo`, the files back byte for byte), search by pick, drop and paste, one request per view, a reload on
each URL, a layout from a laptop to a wide screen, and /docs with nothing fetched from outside the server. Then the
new routes against the server's rules (Host, origin, the request header, the token, JSON only as JSON, ids only).

The collection: 110 pairs of exact copies of small generated images, and a near-duplicate group of a 3000x2000
JPEG, its exact copy and a 600x400 version, one in a long folder name; indexed with the tiny test model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import headless_chromium, invoke, photo, serving_in_thread, simsearch_process
from postgres_server import free_port

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="the server's extra is not installed: pip install -e '.[server]'")
httpx = pytest.importorskip("httpx")

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from server.app import create_app  # noqa: E402

needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no headless browser: apt-get install "
                                                                     "chromium chromium-driver (.ci/run does)")
WAIT_SECONDS = 30
PAIRS = 110
THRESHOLD = "0.0001"
PROOF = {"X-Simsearch-Request": "1"}
LONG_FOLDER = "a folder whose name is far too long to be shown whole on any card of the page at all"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model_file: Path) -> Path:
    root = tmp_path_factory.mktemp("review")
    photos, copies = root / "p", root / "p" / "copies"
    copies.mkdir(parents=True)
    for i in range(PAIRS):
        photo(i, (40, 30)).save(photos / f"img{i:04d}.png")
        shutil.copy(photos / f"img{i:04d}.png", copies / f"img{i:04d}.png")
    near = photos / "near"
    (near / LONG_FOLDER).mkdir(parents=True)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:06:01 12:30:00"  # DateTimeOriginal
    photo(900, (3000, 2000)).save(near / "big.jpg", quality=92, exif=exif)
    shutil.copy(near / "big.jpg", near / "big-copy.jpg")
    photo(900, (600, 400)).save(near / LONG_FOLDER / "small.png")
    result = invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0", cwd=root)
    assert result.exit_code == 0, result.output
    return root


class Site:
    """The served index: its URL, and the API as a client that is not a browser sends it."""

    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root
        self.api = httpx.Client(base_url=url, headers=PROOF, timeout=60)

    def groups(self, page: int = 1) -> dict:  # type: ignore[type-arg]
        answer = self.api.get("/api/review/groups", params={"threshold": THRESHOLD, "page": page, "per_page": 100})
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def group_of(self, name: str) -> dict:  # type: ignore[type-arg]
        """The group one of whose members is named `name`."""
        for page in (1, 2):
            for group in self.groups(page)["groups"]:
                if any(member["name"] == name for member in group["members"]):
                    return group  # type: ignore[no-any-return]
        raise AssertionError(f"no group holds {name}")


@pytest.fixture(scope="module")
def site(library: Path) -> Iterator[Site]:
    with serving_in_thread(create_app(library / "idx"), wait_seconds=WAIT_SECONDS) as url:
        served = Site(url, library)
        yield served
        served.api.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("no headless browser: apt-get install chromium chromium-driver (.ci/run does)")
    with headless_chromium(CHROMIUM, DRIVER, WAIT_SECONDS, log_browser=True) as driver:
        yield driver  # type: ignore[misc]


def wait(browser: webdriver.Chrome):  # type: ignore[no-untyped-def]
    return WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,))


def ids_on_page(browser: webdriver.Chrome) -> list[str]:
    return browser.execute_script(  # type: ignore[no-any-return]
        "return [...document.querySelectorAll('#dup-body [data-group-id]')].map(n => n.dataset.groupId)")


def list_shown(browser: webdriver.Chrome, count: int) -> list[str]:
    """The group ids of the list view once `count` rows are drawn, and nothing is loading."""
    wait(browser).until(lambda d: len(ids_on_page(d)) == count and "busy" not in
                        d.find_element(By.ID, "dup-status").get_attribute("class"))
    return ids_on_page(browser)


def group_shown(browser: webdriver.Chrome, group_id: str | None = None) -> str:
    """The id of the group drawn on its own (`group_id`, when given), once drawn and nothing is loading."""
    def drawn(d: webdriver.Chrome) -> str | bool:
        shown = d.execute_script("const g = document.querySelector('.group-view');"
                                 "return g && !document.getElementById('dup-status').classList.contains('busy') "
                                 "? g.dataset.groupId : null")
        return shown if shown and (group_id is None or shown == group_id) else False
    return wait(browser).until(drawn)  # type: ignore[no-any-return]


def press(browser: webdriver.Chrome, key: str) -> None:
    browser.find_element(By.TAG_NAME, "body").send_keys(key)


def no_errors_logged(browser: webdriver.Chrome) -> None:
    """No script error, nor a content-security-policy violation (an answer's status is the page's to show)."""
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and "Failed to load resource" not in entry["message"]]
    assert not errors, errors


# --- the browser ---------------------------------------------------------------------------------------------------


@needs_browser
def test_paging_past_100_groups_with_the_apis_count(site: Site, browser: webdriver.Chrome) -> None:
    total = site.groups()["total"]
    duplicates = site.api.get("/api/duplicates", params={"threshold": THRESHOLD, "per_page": 1}).json()["total"]
    assert total == duplicates == PAIRS + 1, "110 pairs and the near group: one count, whichever route"
    browser.get(f"{site.url}/duplicates?threshold={THRESHOLD}")
    first = list_shown(browser, 100)
    assert browser.find_element(By.ID, "dup-summary").text.startswith(f"{total} groups at threshold 0.0001")
    browser.find_element(By.CSS_SELECTOR, ".pager a[rel=next]").click()
    second = list_shown(browser, total - 100)
    assert browser.current_url.endswith(f"/duplicates?page=2&threshold={THRESHOLD}")
    assert browser.find_element(By.CSS_SELECTOR, ".group-list").get_attribute("start") == "101"
    assert len(set(first + second)) == total, "every group once, none twice"
    assert set(first + second) == {group["id"] for page in (1, 2) for group in site.groups(page)["groups"]}
    browser.back()
    assert list_shown(browser, 100) == first
    press(browser, Keys.ARROW_RIGHT)  # the keyboard turns pages too
    assert list_shown(browser, total - 100) == second
    no_errors_logged(browser)


@needs_browser
def test_no_double_rendering_and_a_status_line_per_view(site: Site, browser: webdriver.Chrome) -> None:
    browser.get(f"{site.url}/duplicates?threshold={THRESHOLD}")
    list_shown(browser, 100)
    button = browser.find_element(By.ID, "refresh")
    browser.execute_script("arguments[0].click(); arguments[0].click(); arguments[0].click()", button)
    shown = list_shown(browser, 100)
    assert len(shown) == len(set(shown)) == 100, "three clicks, one list"
    browser.find_element(By.ID, "tab-search").click()
    browser.find_element(By.ID, "file").send_keys(str(site.root / "p" / "img0003.png"))
    wait(browser).until(lambda d: "results in" in d.find_element(By.ID, "search-status").text)
    browser.find_element(By.ID, "tab-duplicates").click()
    wait(browser).until(lambda d: "Groups 1" in d.find_element(By.ID, "dup-status").text)
    visible = [node.text for node in browser.find_elements(By.CSS_SELECTOR, ".status") if node.is_displayed()]
    assert len(visible) == 1 and "results in" not in visible[0], "the search's line stays on the search view"


@needs_browser
def test_compare_a_group_then_zoom_into_a_member(site: Site, browser: webdriver.Chrome) -> None:
    near = site.group_of("small.png")
    browser.get(f"{site.url}/duplicates/group/{near['id']}?threshold={THRESHOLD}")
    assert group_shown(browser) == near["id"]
    cards = browser.find_elements(By.CSS_SELECTOR, ".group-view [data-image-id]")
    assert [int(card.get_attribute("data-image-id")) for card in cards] == [m["image_id"] for m in near["members"]]
    tops = {card.rect["y"] for card in cards}
    assert len(tops) == 1, "side by side"
    keeper, *others = cards
    assert "KEEP" in keeper.text and "big.jpg" in keeper.text
    rule = {"largest": "most pixels", "quality": "JPEG quality", "oldest": "oldest", "path": "path order",
            "shortest-path": "shortest path"}[near["decided_by"]]
    assert f"the keeper chosen by {rule}" in browser.find_element(By.CSS_SELECTOR, ".group-head").text, \
        "the rule that chose it"
    assert "3000\u00d72000" in keeper.text and "JPEG q92" in keeper.text, "dimensions, format, quality"
    assert "taken\n2019-06-01 12:30" in keeper.text, "its capture time"
    copy = next(card for card in others if "big-copy.jpg" in card.text)
    small = next(card for card in others if "small.png" in card.text)
    assert "COPY" in copy.text and "similarity 1.0000" in copy.text
    assert "600\u00d7400" in small.text and "PNG" in small.text and "similarity" in small.text
    assert "file\n20" in small.text, "no capture time in it: the file's time, said so"
    folder = small.find_element(By.CSS_SELECTOR, ".folder").text
    assert "\u2026" in folder and folder.startswith("near/a folder") and folder.endswith("at all/"), \
        "a long path is shortened in its middle"
    wait(browser).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('.group-view img')].every(i => i.complete && i.naturalWidth > 0)"))

    keeper.find_element(By.CSS_SELECTOR, ".frame").click()
    image = browser.find_element(By.ID, "viewer-image")
    wait(browser).until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) == 2048)
    assert browser.execute_script("return arguments[0].naturalHeight", image) == 1365, "bounded to 2048 px"
    stage = browser.find_element(By.ID, "viewer-stage")
    fitted = image.rect
    assert fitted["width"] <= stage.rect["width"] + 1 and fitted["height"] <= stage.rect["height"] + 1, "fitted"
    press(browser, "+")
    wait(browser).until(lambda d: image.rect["width"] > fitted["width"] * 1.2)
    browser.find_element(By.ID, "zoom-one").click()
    wait(browser).until(lambda d: round(image.rect["width"]) == 2048)
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", stage)
    assert browser.find_element(By.ID, "zoom-level").text == "100%"
    press(browser, Keys.ARROW_RIGHT)  # the next member, fitted again
    wait(browser).until(lambda d: "2/3" in d.find_element(By.ID, "viewer-caption").text)
    press(browser, Keys.ESCAPE)
    wait(browser).until(lambda d: not d.find_element(By.ID, "viewer").is_displayed())
    no_errors_logged(browser)


@needs_browser
def test_a_reload_on_each_url_shows_its_view(site: Site, browser: webdriver.Chrome) -> None:
    group = site.groups(2)["groups"][0]
    for path, check in [
        ("/", lambda: browser.find_element(By.ID, "drop").is_displayed()),
        ("/duplicates", lambda: browser.find_element(By.ID, "duplicates").is_displayed() and "busy" not in
         browser.find_element(By.ID, "dup-status").get_attribute("class")),  # no calibration: a line says so
        (f"/duplicates?page=2&threshold={THRESHOLD}", lambda: len(ids_on_page(browser)) == PAIRS + 1 - 100),
        (f"/duplicates/group/{group['id']}?threshold={THRESHOLD}",
         lambda: group_shown(browser, group["id"]) and "Group 101 of" in browser.find_element(
             By.CSS_SELECTOR, ".group-head h2").text),
    ]:
        browser.get(site.url + path)
        wait(browser).until(lambda d: check())
        browser.refresh()
        wait(browser).until(lambda d: check())
        assert browser.current_url == site.url + path
    press(browser, Keys.ARROW_LEFT)  # group 100, on page 1: across pages
    wait(browser).until(lambda d: "Group 100 of" in d.find_element(By.CSS_SELECTOR, ".group-head h2").text)
    browser.back()
    assert group_shown(browser, group["id"])
    no_errors_logged(browser)


@needs_browser
def test_resolve_then_undo_from_the_page_and_with_simsearch_undo(site: Site, browser: webdriver.Chrome) -> None:
    before = site.groups()["total"]
    for name, undone_by in (("img0005.png", "page"), ("img0006.png", "cli")):
        group = site.group_of(name)
        files = [Path(member["path"]) for member in group["members"]]
        sums = {path: sha256(path) for path in files}
        browser.get(f"{site.url}/duplicates/group/{group['id']}?threshold={THRESHOLD}")
        group_shown(browser, group["id"])
        browser.find_element(By.ID, "resolve").click()
        wait(browser).until(lambda d: "Moved 1 file to the quarantine folder" in d.find_element(By.ID, "dup-status").text)
        assert group_shown(browser) != group["id"], "the next group takes its place"
        assert site.groups()["total"] == before - 1 and group["id"] not in browser.current_url
        moved = [path for path in files if not path.exists()]
        assert len(moved) == 1
        [resolve] = [made for made in site.api.get("/api/review/resolutions").json() if made["group"] == group["id"]
                     and made["away"]]
        manifest = Path(resolve["manifest"])
        assert manifest.parent.parent == site.root / "idx" / "quarantine", "the server's folder, in the index"
        if undone_by == "page":
            browser.find_element(By.ID, "undo").click()
            wait(browser).until(lambda d: "Put 1 file back" in d.find_element(By.ID, "dup-status").text)
            assert group_shown(browser, group["id"]), "the undone group comes back, at its own URL"
        else:
            result = invoke("undo", str(manifest), cwd=site.root)
            assert result.exit_code == 0, result.output
            browser.get(f"{site.url}/duplicates/group/{group['id']}?threshold={THRESHOLD}")
            assert group_shown(browser, group["id"])
        assert {path: sha256(path) for path in files} == sums, "back byte for byte"
        assert site.groups()["total"] == before
    made = site.api.get("/api/review/resolutions").json()
    assert [entry["away"] for entry in made[:2]] == [0, 0], "both undone"
    wait(browser).until(lambda d: "simsearch undo" in d.find_element(By.ID, "resolved-list").get_attribute(
        "textContent") and "undone" in d.find_element(By.ID, "resolved-list").get_attribute("textContent"))
    no_errors_logged(browser)


@needs_browser
def test_keyboard_decisions(site: Site, browser: webdriver.Chrome, tmp_path: Path) -> None:
    """On a copy of the module's index, served on its own: the decisions recorded here last, and would change the
    groups that the other tests find, whatever order they run in."""
    from retrieval.index import open_index

    shutil.copytree(site.root / "idx", tmp_path / "idx")
    store = open_index(tmp_path / "idx").store
    with serving_in_thread(create_app(tmp_path / "idx"), wait_seconds=WAIT_SECONDS) as url:
        own = Site(url, site.root)
        try:
            near = own.group_of("small.png")
            browser.get(f"{own.url}/duplicates/group/{near['id']}?threshold={THRESHOLD}")
            group_shown(browser, near["id"])
            position = browser.find_element(By.CSS_SELECTOR, ".group-head h2").text
            press(browser, "3")  # the third member: small.png, its place in the order of the API's members
            members = browser.find_elements(By.CSS_SELECTOR, ".group-view .member")
            assert "selected" in members[2].get_attribute("class")
            small = near["members"][2]
            assert small["name"] == "small.png"
            press(browser, "k")  # keep it instead: the same group, kept by your choice
            wait(browser).until(lambda d: "Kept" in d.find_element(By.ID, "dup-status").text)
            group_shown(browser, near["id"])
            keeper = browser.find_element(By.CSS_SELECTOR, ".group-view .member.keeper")
            assert keeper.get_attribute("data-image-id") == str(small["image_id"])
            assert "chosen by your choice" in browser.find_element(By.CSS_SELECTOR, ".group-head").text
            assert len(store.chosen_keepers()) == 1
            press(browser, "n")  # none of these are duplicates of it: the group leaves
            wait(browser).until(lambda d: "Recorded: not duplicates" in d.find_element(By.ID, "dup-status").text)
            assert group_shown(browser) != near["id"] and len(store.distinct_pairs()) == 1
            press(browser, Keys.ARROW_RIGHT)
            wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, ".group-head h2").text != position)
            no_errors_logged(browser)
        finally:
            own.api.close()


@needs_browser
def test_search_by_pick_drop_and_paste_with_member_details(site: Site, browser: webdriver.Chrome) -> None:
    browser.get(site.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(site.root / "p" / "img0003.png"))
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results [data-image-id]"))
    first = browser.find_element(By.CSS_SELECTOR, "#results [data-image-id]")
    assert "img0003.png" in first.text and "similarity 1.0000" in first.text and "40\u00d730" in first.text
    assert "PNG" in first.text and "#1" in first.text
    for event in ("drop", "paste"):  # a file dropped on the page, or pasted: the same search
        browser.execute_async_script("""
            const [kind, done] = arguments;
            const headers = {"X-Simsearch-Request": "1"};
            fetch("/api/thumbnail/" + document.querySelector("#results [data-image-id]").dataset.imageId, {headers})
              .then(r => r.blob()).then(blob => {
                const data = new DataTransfer();
                data.items.add(new File([blob], kind + ".jpg", {type: "image/jpeg"}));
                if (kind === "drop") document.getElementById("drop").dispatchEvent(
                  new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
                else document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
                done();
              });""", event)
        wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, "#query-preview figcaption").text
                            == f"{event}.jpg" and "results in" in d.find_element(By.ID, "search-status").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#results [data-image-id]")
    sources = browser.execute_script("return [...document.querySelectorAll('#results img')].map(i => i.src)")
    assert all(source.startswith("blob:") for source in sources if source)
    no_errors_logged(browser)


@needs_browser
def test_the_layout_holds_from_a_laptop_to_a_wide_screen(site: Site, browser: webdriver.Chrome) -> None:
    near = site.groups()["groups"][0]
    try:
        for width, height in ((1024, 700), (1366, 768), (2560, 1400)):
            browser.set_window_size(width, height)
            for path in (f"/duplicates?threshold={THRESHOLD}", f"/duplicates/group/{near['id']}?threshold={THRESHOLD}"):
                browser.get(site.url + path)
                wait(browser).until(lambda d: ids_on_page(d))
                overflow = browser.execute_script(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert overflow <= 0, f"{width}px: {path} is {overflow}px too wide"
    finally:
        browser.set_window_size(1280, 900)


@needs_browser
def test_docs_render_with_nothing_from_outside(site: Site, browser: webdriver.Chrome) -> None:
    browser.get(site.url + "/docs")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    assert "simsearch" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    assert browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/api/review/resolve']")
    fetched = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
    assert len(fetched) >= 4 and all(url.startswith(site.url + "/") for url in fetched), fetched
    assert site.api.get("/redoc").status_code == 404, "ReDoc exists only on a CDN: not offered"
    browser.get(f"{site.url}/duplicates?threshold={THRESHOLD}")  # the page, too: everything from the server
    wait(browser).until(lambda d: ids_on_page(d))
    fetched = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
    assert all(url.startswith(site.url + "/") for url in fetched), fetched


# --- the new routes against the server's rules -------------------------------------------------------------------

def new_api_gets(image_id: int) -> list[str]:
    return [f"/api/review/groups?threshold={THRESHOLD}", "/api/review/resolutions",
            f"/api/review/images?ids={image_id}", f"/api/image/{image_id}"]


def raw_get(site: Site, path: str) -> int:
    """The status of a GET of `path` sent as it is (an HTTP client would remove its dot segments)."""
    with socket.create_connection(("127.0.0.1", int(site.url.rsplit(":", 1)[1])), timeout=30) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Simsearch-Request: 1\r\n"
                           "Connection: close\r\n\r\n".encode())
        return int(connection.recv(64).split()[1])


def test_new_routes_need_the_request_header_and_refuse_other_sites(site: Site) -> None:
    bare = httpx.Client(base_url=site.url, timeout=30)
    group = site.groups()["groups"][0]
    for path in new_api_gets(group["members"][0]["image_id"]) + [
            f"/api/review/groups/{group['id']}?threshold={THRESHOLD}"]:
        assert bare.get(path).status_code == 403, f"{path} without X-Simsearch-Request"
        assert site.api.get(path).status_code == 200, path
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "https://evil.example"}, {"Origin": "null"}):
            assert site.api.get(path, headers=headers).status_code == 403, (path, headers)
        assert site.api.get(path, headers={"Host": "evil.example"}).status_code == 400, path
    body = {"group": group["id"], "keeper": group["members"][0]["image_id"], "threshold": float(THRESHOLD)}
    for path, sent in (("/api/review/resolve", body), ("/api/review/undo", {"resolution": "x"})):
        as_text = site.api.post(path, content=json.dumps(sent), headers={"Content-Type": "text/plain"})
        assert as_text.status_code == 415, "a cross-site form's enctype is refused"
        assert bare.post(path, json=sent).status_code == 403
        assert site.api.post(path, json=sent, headers={"Origin": "https://evil.example"}).status_code == 403
    assert site.groups()["total"] == PAIRS + 1, "nothing was resolved"


def test_resolve_and_undo_name_only_ids(site: Site) -> None:
    group = site.groups()["groups"][0]
    keeper = group["members"][0]["image_id"]
    for resolution in ("../../etc", "/etc/passwd", "20260101T000000-0000000000000000-000000/../x", 7):
        assert site.api.post("/api/review/undo", json={"resolution": resolution}).status_code == 422
    assert site.api.post("/api/review/undo", json={
        "resolution": "20260101T000000-0000000000000000-000000"}).status_code == 404
    for body, status in (({"group": "../../x", "keeper": keeper, "threshold": float(THRESHOLD)}, 404),
                         ({"group": group["id"]}, 422),
                         ({"group": group["id"], "keeper": keeper, "destination": "/tmp/x"}, 422),
                         ({"group": group["id"], "keeper": keeper + 10_000, "threshold": float(THRESHOLD)}, 409),
                         ({"group": group["id"], "keeper": keeper, "threshold": "many"}, 422)):
        answer = site.api.post("/api/review/resolve", json=body)
        assert answer.status_code == status, (body, answer.text)
    assert site.api.get("/api/review/groups/not-an-id").status_code == 422
    for path in ("/duplicates/group/../../api/decisions", "/static/%2e%2e/%2e%2e/api/decisions",
                 "/static/../server/app.py", "/static/index.html/../page.js"):
        assert raw_get(site, path) == 404, "an open path's prefix reaches nothing else"
    assert site.groups()["total"] == PAIRS + 1


def test_a_rendition_is_bounded_and_refused_for_a_changed_file(site: Site, tmp_path: Path) -> None:
    big = next(m for m in site.group_of("big.jpg")["members"] if m["name"] == "big.jpg")
    answer = site.api.get(f"/api/image/{big['image_id']}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    thumb = site.api.get(f"/api/thumbnail/{big['image_id']}")
    for image in (answer, thumb):  # an id may hold other content after a re-index: never shown from a cache unasked
        assert "no-cache" in image.headers["cache-control"] and "max-age" not in image.headers["cache-control"]
    (tmp_path / "r.jpg").write_bytes(answer.content)
    with Image.open(tmp_path / "r.jpg") as image:
        assert image.size == (2048, 1365)
    small = site.groups()["groups"][-1]["members"][-1]
    path = Path(small["path"])
    saved, stat = path.read_bytes(), path.stat()
    try:
        path.write_bytes(saved + b"\0")  # no longer the file indexed there
        changed = site.api.get(f"/api/image/{small['image_id']}")
        assert changed.status_code == 404 and "no longer holds" in changed.json()["detail"]
    finally:
        path.write_bytes(saved)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_with_a_token_the_page_opens_and_every_api_route_and_docs_need_it(site: Site, library: Path) -> None:
    from fastapi.testclient import TestClient

    image_id = site.groups()["groups"][0]["members"][0]["image_id"]
    with TestClient(create_app(library / "idx", token="s3cret"), base_url="http://127.0.0.1") as client:
        for path in ("/", "/duplicates", "/duplicates/group/0123456789abcdef", "/static/page.js",
                     "/static/page.css"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], "no framing"
        for path in new_api_gets(image_id) + ["/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"]:
            assert client.get(path, headers=PROOF).status_code == 401, path
            assert client.get(path, headers={**PROOF, "Authorization": "Bearer s3cret"}).status_code == 200, path
        assert client.post("/api/review/resolve", json={}, headers=PROOF).status_code == 401


def test_resolve_to_the_trash_and_undo(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The trash as send2trash keeps it on a desktop (a freedesktop trash, here in the test's folder): the
    manifest beside the resolve, undone through it."""
    import send2trash

    trash = tmp_path / "share" / "Trash"
    (trash / "files").mkdir(parents=True)
    (trash / "info").mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))

    def fake_send(path: str) -> None:
        name = os.path.basename(path)
        os.rename(path, trash / "files" / name)
        (trash / "info" / f"{name}.trashinfo").write_text(f"[Trash Info]\nPath={path}\n")

    monkeypatch.setattr(send2trash, "send2trash", fake_send)
    group = site.group_of("img0009.png")
    files = {Path(m["path"]): sha256(Path(m["path"])) for m in group["members"]}
    done = site.api.post("/api/review/resolve", json={
        "group": group["id"], "keeper": group["members"][0]["image_id"], "destination": "trash",
        "threshold": float(THRESHOLD)}).json()
    assert done["moved"] == 1 and Path(done["manifest"]).name == "trash-moves.jsonl"
    assert [p.name for p in (trash / "files").iterdir()] == ["img0009.png"]
    assert site.groups()["total"] == PAIRS
    back = site.api.post("/api/review/undo", json={"resolution": done["resolution"]}).json()
    assert back["restored"] == 1 and not list((trash / "files").iterdir())
    assert {path: sha256(path) for path in files} == files and site.groups()["total"] == PAIRS + 1


def test_serve_quarantine_is_where_resolve_moves_files(site: Site, tmp_path: Path) -> None:
    """`simsearch serve --quarantine DIR`: the server's folder, said when it starts; the page never names one."""
    port = free_port()
    folder = tmp_path / "held back"
    log = tmp_path / "serve.log"
    process = simsearch_process("serve", "--index", "idx", "--port", str(port), "--quarantine", str(folder),
                                cwd=site.root, log=log)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=PROOF, timeout=60)
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                if api.get("/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.2)
        group = site.group_of("img0042.png")
        done = api.post("/api/review/resolve", json={"group": group["id"], "keeper": group["members"][0]["image_id"],
                                                     "threshold": float(THRESHOLD)}).json()
        assert done["moved"] == 1 and Path(done["manifest"]).parent.parent == folder
        assert [path.name for path in folder.rglob("img0042.png")] == ["img0042.png"]
        assert api.post("/api/review/undo", json={"resolution": done["resolution"]}).json()["restored"] == 1
        assert not list(folder.rglob("img0042.png")) and site.groups()["total"] == PAIRS + 1
        api.close()
    finally:
        process.terminate()
        process.wait(WAIT_SECONDS)
    assert f"moves files under {folder}" in " ".join(log.read_text().split())
