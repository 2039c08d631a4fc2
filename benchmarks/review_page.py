"""The review page in headless chromium: its screenshots, and how fast it is where a person waits.

Screenshots (docs/screenshots/): the demo photos, a few of them also saved again as smaller JPEG exports and as
exact copies in a backup folder, all copied into a temporary folder and indexed there with the default model; the
page shows paths relative to that folder, and the script checks that no path of this machine (the temporary
folder's, this checkout's) is on screen. Saved: search.png (a query by the demo's other motorcycle),
duplicates.png (the list of groups), group.png (one group compared), viewer.png (a member's full image, zoomed),
resolved.png (a group resolved, with its Undo).

Timings: 120 generated photos (320x240), each with an exact copy and a JPEG re-encode, indexed with the default
model, served by `simsearch serve`; in a fresh browser profile each run:
- the first paint of a page of 100 groups: from navigation start to the first contentful paint (the page's own
  shell), to the 100 groups drawn (`simsearch:list-drawn`), and to every thumbnail in the window loaded;
- from a click on "Next" to the next group drawn (`simsearch:group-drawn`) and to its thumbnails loaded, over 20
  clicks that cross from page 1 to page 2 of the groups.
Printed as a table and appended to `benchmarks/results/review_page.jsonl`.

    python benchmarks/review_page.py [--runs 5] [--no-screenshots | --no-timings]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.server_load import Server  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "review_page.jsonl"
SCREENSHOTS = REPO / "docs" / "screenshots"
DEMO = REPO / "demo"
GROUPS = 120
THRESHOLD = "0.01"
"""For the generated collection: a copy is at 0, a JPEG re-encode far below it, two generated photos far above."""
CLICKS = 20
WAIT = 120


def build_index(index: Path, folders: list[Path]) -> None:
    subprocess.run([sys.executable, "-m", "cli", "index", *map(str, folders), "--index", str(index)], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def browser(width: int = 1440, height: int = 900):  # type: ignore[no-untyped-def]
    from selenium import webdriver

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="simsearch-bench-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    made = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    made.set_page_load_timeout(WAIT)
    made.profile = profile
    return made


def close(driver) -> None:  # type: ignore[no-untyped-def]
    driver.quit()
    shutil.rmtree(driver.profile, ignore_errors=True)


def until(driver, check, seconds: float = WAIT):  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,)).until(check)


IMAGES_IN = """return [...document.querySelectorAll(arguments[0])].filter(i => {
  const box = i.getBoundingClientRect();
  return box.bottom > 0 && box.top < innerHeight;
}).every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'))"""


# --- screenshots ---------------------------------------------------------------------------------------------------


def demo_library(folder: Path) -> Path:
    """The demo's photos and query, a smaller JPEG export of four of them and an exact copy of three."""
    photos = sorted((DEMO / "photos").iterdir())
    (folder / "photos").mkdir(parents=True)
    (folder / "queries").mkdir()
    for path in photos:
        shutil.copy2(path, folder / "photos" / path.name)
    shutil.copy2(DEMO / "queries" / "motorcycle_right.png", folder / "queries")
    exports = folder / "exports" / "2024 holiday, for the web"
    exports.mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"):
        with Image.open(folder / "photos" / name) as image:
            small = image.convert("RGB")
            small.thumbnail((image.width * 2 // 3, image.height * 2 // 3))
            small.save(exports / (Path(name).stem + ".jpg"), quality=82)
    (folder / "backup").mkdir()
    for name in ("chelsea.png", "coffee.png", "horse.png"):  # copied now: newer than the photos they copy
        shutil.copy(folder / "photos" / name, folder / "backup" / name)
    return folder


def no_machine_paths(driver, hidden: list[str]) -> None:  # type: ignore[no-untyped-def]
    text = driver.execute_script("return document.body.innerText")
    for path in hidden:
        assert path not in text, f"{path} is on screen"


def screenshots() -> list[str]:
    from selenium.webdriver.common.by import By

    saved = []
    with tempfile.TemporaryDirectory() as tmp:
        library = demo_library(Path(tmp) / "library")
        index = Path(tmp) / "index"
        build_index(index, [library])
        server = Server(index, 5.0, 32)
        driver = browser()
        hidden = [tmp, str(REPO)]
        try:
            def save(name: str) -> None:
                no_machine_paths(driver, hidden)
                driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
                saved.append(name)

            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            driver.get(server.url + "/")
            driver.find_element(By.ID, "file").send_keys(str(library / "queries" / "motorcycle_right.png"))
            until(driver, lambda d: "results in" in d.find_element(By.ID, "search-status").text)
            until(driver, lambda d: d.execute_script(IMAGES_IN, "#results img"))
            save("search")
            driver.get(server.url + "/duplicates")
            until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".group-row"))
            until(driver, lambda d: d.execute_script(IMAGES_IN, ".group-row img"))
            save("duplicates")
            row = next(r for r in driver.find_elements(By.CSS_SELECTOR, ".group-row") if "chelsea" in r.text)
            row.find_element(By.TAG_NAME, "a").click()
            until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".group-view .member"))
            until(driver, lambda d: d.execute_script(IMAGES_IN, ".group-view img"))
            time.sleep(1.5)  # the renditions replace the thumbnails
            save("group")
            driver.find_elements(By.CSS_SELECTOR, ".group-view .frame")[1].click()
            until(driver, lambda d: d.execute_script(
                "return document.getElementById('viewer-image').naturalWidth > 256"))
            driver.find_element(By.ID, "zoom-in").click()
            driver.find_element(By.ID, "zoom-in").click()
            time.sleep(0.3)
            save("viewer")
            driver.find_element(By.ID, "viewer-close").click()
            driver.find_element(By.ID, "resolve").click()
            until(driver, lambda d: d.find_elements(By.ID, "undo"))
            until(driver, lambda d: d.execute_script(IMAGES_IN, ".group-view img"))
            driver.execute_script("document.getElementById('resolved').open = true")
            save("resolved")
        finally:
            close(driver)
            server.stop()
    return saved


# --- timings -------------------------------------------------------------------------------------------------------


def generated_library(folder: Path, groups: int) -> Path:
    (folder / "photos").mkdir(parents=True)
    (folder / "copies").mkdir()
    (folder / "web").mkdir()
    for i in range(groups):
        rng = np.random.default_rng(i)
        image = Image.fromarray(rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)).resize(
            (320, 240), Image.Resampling.BICUBIC)
        image.save(folder / "photos" / f"img{i:04d}.png")
        shutil.copy2(folder / "photos" / f"img{i:04d}.png", folder / "copies" / f"img{i:04d}.png")
        image.save(folder / "web" / f"img{i:04d}.jpg", quality=80)
    return folder


def first_paint(url: str) -> dict[str, float]:
    """ms from navigation start to the first contentful paint, the 100 groups drawn, and the thumbnails in the
    window loaded, in a fresh browser."""
    from selenium.webdriver.common.by import By

    driver = browser(1440, 900)
    try:
        driver.get(url + f"/duplicates?threshold={THRESHOLD}")
        until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".group-row")) == 100)
        loaded = driver.execute_async_script("""
            const [selector, done] = arguments;
            const check = () => {
              const images = [...document.querySelectorAll(selector)].filter(i => {
                const box = i.getBoundingClientRect(); return box.bottom > 0 && box.top < innerHeight; });
              if (images.length && images.every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:')))
                done(performance.now());
              else requestAnimationFrame(check);
            };
            check();""", ".group-row img")
        marks = driver.execute_script("""return {
            paint: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
            drawn: performance.getEntriesByName('simsearch:list-drawn')[0].startTime}""")
        return {"first_contentful_paint_ms": marks["paint"], "groups_drawn_ms": marks["drawn"],
                "thumbnails_ms": loaded}
    finally:
        close(driver)


CLICK_NEXT = """
const done = arguments[0];
const before = document.querySelector('.group-view').dataset.groupId;
performance.clearMarks('simsearch:group-drawn');
const started = performance.now();
document.getElementById('next-group').click();
let drawn = null;
const check = () => {
  const view = document.querySelector('.group-view');
  if (drawn === null && view && view.dataset.groupId !== before
      && !document.getElementById('dup-status').classList.contains('busy')) {
    drawn = performance.getEntriesByName('simsearch:group-drawn')[0].startTime - started;
  }
  if (drawn !== null && [...view.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0
                                                                     && i.src.startsWith('blob:'))) {
    done({drawn, images: performance.now() - started});
  } else requestAnimationFrame(check);
};
requestAnimationFrame(check);"""


def clicks(url: str, start_id: str) -> list[dict[str, float]]:
    """ms from a click on "Next" to the next group drawn and its images loaded, `CLICKS` times."""
    from selenium.webdriver.common.by import By

    driver = browser(1440, 900)
    try:
        driver.get(url + f"/duplicates/group/{start_id}?threshold={THRESHOLD}")
        until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".group-view .member"))
        return [driver.execute_async_script(CLICK_NEXT) for _ in range(CLICKS)]
    finally:
        close(driver)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1), "max": round(ordered[-1], 1)}


def timings(runs: int) -> dict[str, object]:
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        library = generated_library(Path(tmp) / "generated", GROUPS)
        index = Path(tmp) / "index"
        build_index(index, [library])
        server = Server(index, 5.0, 32)
        try:
            headers = {"X-Simsearch-Request": "1"}
            started = time.perf_counter()
            page = httpx.get(f"{server.url}/api/review/groups", params={"threshold": THRESHOLD, "per_page": 100},
                             headers=headers, timeout=WAIT).json()
            api_ms = 1000 * (time.perf_counter() - started)
            start = page["groups"][89]["id"]  # 20 clicks from group 90: across pages 1 and 2
            paints = [first_paint(server.url) for _ in range(runs)]
            steps = [step for _ in range(max(1, runs // 2)) for step in clicks(server.url, start)]
        finally:
            server.stop()
    return {"groups": page["total"], "images": 3 * GROUPS, "api_groups_page_ms": round(api_ms, 1),
            "first_paint": {key: summary([paint[key] for paint in paints]) for key in paints[0]},
            "next_group": {key: summary([step[key] for step in steps]) for key in ("drawn", "images")},
            "runs": runs, "clicks": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-screenshots", action="store_true")
    parser.add_argument("--no-timings", action="store_true", help="only save the screenshots")
    args = parser.parse_args()
    saved = [] if args.no_screenshots else screenshots()
    if args.no_timings:
        return
    measured = timings(args.runs)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              **measured, "screenshots": saved}
    table = Table(title=f"The review page, {measured['groups']} groups of 3 ({measured['images']} images, default "
                        f"model), headless chromium 1440x900; ms, over {measured['runs']} fresh loads and "
                        f"{measured['clicks']} clicks")
    for column in ("what", "median", "p90", "max"):
        table.add_column(column, justify="right" if column != "what" else "left")
    rows = [("100-group page: first contentful paint", measured["first_paint"]["first_contentful_paint_ms"]),
            ("100-group page: the groups drawn", measured["first_paint"]["groups_drawn_ms"]),
            ("100-group page: thumbnails in view loaded", measured["first_paint"]["thumbnails_ms"]),
            ("click Next: the next group drawn", measured["next_group"]["drawn"]),
            ("click Next: its images loaded", measured["next_group"]["images"])]
    for name, values in rows:
        table.add_row(name, *(f"{values[key]:.0f}" for key in ("median", "p90", "max")))  # type: ignore[index]
    console = Console(width=140)
    console.print(table)
    console.print(f"GET /api/review/groups (a page of 100, the groups found afresh): {measured['api_groups_page_ms']:.0f}"
                  f" ms; screenshots saved: {', '.join(saved) or 'none'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
