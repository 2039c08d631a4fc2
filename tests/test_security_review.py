"""The review page's resolve and undo, attacked: a manifest edited on disk to point undo at other files, a symbolic
link planted where a moved file's folder was, another index's resolve, stale and forged groups, and the answers'
headers and error details. Small unit tests against `retrieval.decisions.moves`, and a real server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the test extra is not installed: pip install -e '.[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="the server's extra is not installed: pip install -e '.[server]'")

from conftest import invoke, photo, serving_in_thread  # noqa: E402
from retrieval import open_collection  # noqa: E402
from retrieval.decisions.moves import move_duplicates, undo_moves  # noqa: E402
from server.app import create_app  # noqa: E402

THRESHOLD = 0.05


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def library(tmp_path: Path, tiny_model_file: Path) -> Path:
    """photos/a.png and its exact copy photos/sub/a.png, indexed in tmp_path/.simsearch; a victim's file
    elsewhere/secret.png (not indexed)."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    photo(0, (64, 48)).save(photos / "a.png")
    shutil.copy(photos / "a.png", photos / "sub" / "a.png")
    (tmp_path / "elsewhere").mkdir()
    photo(7, (64, 48)).save(tmp_path / "elsewhere" / "secret.png")
    result = invoke("index", "photos", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


def moved(library: Path) -> tuple[Path, dict[str, object]]:
    """Move the group's other to library/q; (the manifest, its one line as a dict)."""
    collection = open_collection(library / ".simsearch")
    report = move_duplicates(collection.index, collection.dedup(threshold=THRESHOLD), library / "q")
    assert len(report.moved) == 1, report
    [line] = report.manifest.read_text().splitlines()
    return report.manifest, json.loads(line)


def rewrite(manifest: Path, line: dict[str, object]) -> None:
    """`line` as the manifest's only line, its `folder` made to agree with its `from` (as an editor would)."""
    folder = os.path.realpath(os.path.dirname(str(line["from"])))
    manifest.write_text(json.dumps({**line, "folder": folder}) + "\n")


def test_undo_never_moves_a_file_an_edited_manifest_names(library: Path) -> None:
    """A manifest is a file anyone may edit: a line pointed at another file (its content hash computed) must not
    move that file, nor put a file anywhere but where a move of this manifest took it from."""
    manifest, line = moved(library)
    secret = library / "elsewhere" / "secret.png"
    digest = sha256(secret)
    away = library / "loot" / "secret.png"
    for edit in (
            {"to": str(secret), "from": str(away)},  # another file, outside the manifest's folder
            {"to": str(secret), "from": str(library / "photos" / "secret.png")},
            {"to": line["to"], "from": str(library / "loot" / "x" / ".." / "a.png")},  # not normalised
            {"to": line["to"], "from": str(library / "elsewhere" / "planted.png")}):  # not where it came from
        rewrite(manifest, {**line, **edit, "content_hash": digest if edit["to"] == str(secret)
                           else line["content_hash"]})
        report = undo_moves(manifest)
        assert report.restored == [] and len(report.failed) == 1, (edit, report)
        assert sha256(secret) == digest and not away.exists() and not (library / "loot").exists()
        assert not (library / "elsewhere" / "planted.png").exists() and not (library / "photos" / "secret.png"
                                                                                 ).exists()
    rewrite(manifest, {**line, "to": str(secret), "from": str(away), "content_hash": digest})
    result = invoke("undo", str(manifest), cwd=library)  # the CLI's undo, the same
    assert result.exit_code == 1 and "not under the manifest's folder" in result.stderr, result.output
    assert sha256(secret) == digest and not away.exists()
    rewrite(manifest, line)
    assert len(undo_moves(manifest).restored) == 1, "the line as written still undoes"
    assert sha256(library / "photos" / "sub" / "a.png") == sha256(library / "photos" / "a.png")


def test_undo_never_writes_through_a_symbolic_link_planted_where_its_folder_was(library: Path) -> None:
    manifest, line = moved(library)
    source = Path(str(line["from"]))
    folder = source.parent
    assert not source.exists() and not any(folder.iterdir())
    folder.rmdir()
    outside = library / "outside"
    outside.mkdir()
    folder.symlink_to(outside, target_is_directory=True)
    report = undo_moves(manifest)
    assert report.restored == [] and "no longer the one it was moved from" in report.failed[0].reason
    assert list(outside.iterdir()) == [] and Path(str(line["to"])).is_file(), "left where it was moved"
    folder.unlink()
    folder.mkdir()
    assert len(undo_moves(manifest).restored) == 1 and source.is_file()


def test_undo_of_a_trash_line_edited_to_name_another_file(library: Path) -> None:
    """A trash line names a file in a trash only where the trash's own entry says it came from there."""
    manifest, line = moved(library)
    secret = library / "elsewhere" / "files" / "a.png"
    secret.parent.mkdir()
    shutil.copy(Path(str(line["to"])), secret)
    rewrite(manifest, {**line, "action": "trash", "to": str(secret)})
    report = undo_moves(manifest)
    assert report.restored == [] and "not where a trash keeps" in report.failed[0].reason
    assert secret.is_file()


# --- a real server on loopback ----------------------------------------------------------------------------------

PROOF = {"X-Simsearch-Request": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_model_file: Path) -> Iterator[httpx.Client]:
    """A server (uvicorn, on loopback) over photos/{a,b}.png and their copies in photos/sub; a client of it that
    sends the page's header."""
    root = tmp_path_factory.mktemp("review-attacks")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, name in enumerate("ab"):
        photo(i, (64, 48)).save(photos / f"{name}.png")
        shutil.copy(photos / f"{name}.png", photos / "sub" / f"{name}.png")
    result = invoke("index", "photos", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0",
                    cwd=root)
    assert result.exit_code == 0, result.output
    with serving_in_thread(create_app(root / "idx"), log_level="critical") as url, \
            httpx.Client(base_url=url, headers=PROOF, timeout=60) as client:
        client.root = root  # type: ignore[attr-defined]
        yield client


def groups(site: httpx.Client) -> dict:  # type: ignore[type-arg]
    answer = site.get("/api/review/groups", params={"threshold": THRESHOLD})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_threshold_beyond_any_distance_is_a_422_not_a_500(site: httpx.Client) -> None:
    """1e308 is finite, but no float32: the vector search raised a TypeError (500, a traceback logged)."""
    group = groups(site)["groups"][0]
    for huge in (1e308, 4.5):
        assert site.get("/api/review/groups", params={"threshold": huge}).status_code == 422
        assert site.get("/api/duplicates", params={"threshold": huge}).status_code == 422
        answer = site.post("/api/review/resolve", json={"group": group["id"], "keeper": group["members"][0][
            "image_id"], "threshold": huge})
        assert answer.status_code == 422 and "threshold" in answer.json()["detail"], answer.text
    assert groups(site)["total"] == 2, "nothing moved"


def test_api_answers_are_not_sniffed_nor_cached_and_details_stay_short(site: httpx.Client) -> None:
    group = groups(site)["groups"][0]
    image_id = group["members"][0]["image_id"]
    for path in ("/api/review/groups?threshold=0.05", f"/api/review/images?ids={image_id}", "/api/decisions",
                 "/api/review/resolutions", "/api/ready", "/api/review/groups?page=0", "/api/image/99999",
                 f"/api/image/{image_id}", f"/api/thumbnail/{image_id}"):
        answer = site.get(path)
        assert answer.headers.get("x-content-type-options") == "nosniff", path
        if answer.headers["content-type"].startswith("application/json"):
            assert answer.headers.get("cache-control") == "no-store", path  # they name the index's files
    refused = site.get("/api/decisions", headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and refused.headers.get("x-content-type-options") == "nosniff"
    long = "9" * 20_000
    for path in (f"/api/review/groups?page={long}", f"/api/review/groups?page=-{long}", f"/api/image/{long}",
                 f"/api/review/groups/{'a' * 20_000}", f"/api/review/images?ids={'1,' * 9_000}"):
        answer = site.get(path)
        assert answer.status_code == 422 and len(answer.content) < 300, (path[:60], answer.text[:200])


def test_the_page_undoes_no_resolve_of_another_index(site: httpx.Client) -> None:
    """A quarantine folder two servers share (or a manifest edited to name another index): its files would have
    been added to this index, or indexed into it."""
    group = groups(site)["groups"][0]
    done = site.post("/api/review/resolve", json={"group": group["id"], "keeper": group["members"][0]["image_id"],
                                                  "threshold": THRESHOLD}).json()
    assert done["moved"] == 1, done
    manifest = Path(done["manifest"])
    written = manifest.read_text()
    manifest.write_text(written.replace(json.dumps(str(site.root / "idx")),  # type: ignore[attr-defined]
                                        json.dumps(str(site.root / "another-index"))))  # type: ignore[attr-defined]
    answer = site.post("/api/review/undo", json={"resolution": done["resolution"]})
    assert answer.status_code == 404 and "another index" in answer.json()["detail"], answer.text
    assert groups(site)["total"] == 1, "nothing came back"
    manifest.write_text(written)
    assert site.post("/api/review/undo", json={"resolution": done["resolution"]}).json()["restored"] == 1
    assert groups(site)["total"] == 2
