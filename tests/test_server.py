"""The HTTP API as a client meets it: the CLI's own answers, limits, tokens, and an index changing underneath.
(What a hostile page or client sends to a real server: tests/test_security_server.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the server's extra is not installed: pip install -e '.[server]'")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import invoke, photo, png_header_bomb  # noqa: E402
from server.app import Limits, create_app  # noqa: E402


@pytest.fixture
def indexed(tmp_path: Path, tiny_model_file: Path, make_photos) -> list[Path]:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 8)
    result = invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return photos


URL = "http://127.0.0.1"
"""A Host the server answers to (TestClient's default, "testserver", is not one)."""
API_CLIENT = {"X-Simsearch-Request": "1"}
"""What a client that is not a browser sends with uploads, thumbnails and duplicate groups."""
DISTANCE_TOLERANCE = 1e-4
"""How far two embeddings of one image may differ in distance: the CLI's batch and the server's, or a stored
vector and a re-embedded upload, run different float paths (seen: 0.238909 against 0.23891)."""


def client(tmp_path: Path, **options: object) -> TestClient:
    app = create_app(tmp_path / "idx", **options)  # type: ignore[arg-type]
    return TestClient(app, base_url=URL, headers=API_CLIENT)


def assert_same_neighbours(got: list[dict[str, object]], expected: list[dict[str, object]]) -> None:
    """The same images in the same order, distances within `DISTANCE_TOLERANCE`."""
    def without_distance(neighbours: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{key: value for key, value in n.items() if key != "distance"} for n in neighbours]

    assert without_distance(got) == without_distance(expected)
    assert [n["distance"] for n in got] == pytest.approx([n["distance"] for n in expected], abs=DISTANCE_TOLERANCE)


def test_a_query_answers_as_query_json_does(tmp_path: Path, indexed: list[Path]) -> None:
    cli = json.loads(invoke("query", str(indexed[3]), "-k", "3", "--json", "--index", "idx", cwd=tmp_path).stdout)[0]
    with client(tmp_path) as api:
        uploaded = api.post("/api/query", files={"image": (str(indexed[3]), indexed[3].read_bytes())},
                            data={"k": "3"})
        assert uploaded.status_code == 200, uploaded.text
        assert_same_neighbours(uploaded.json()["neighbours"], cli["neighbours"])
        by_path = api.post("/api/query", json={"path": str(indexed[3]), "k": 3})  # its stored vector, not decoded
        assert_same_neighbours(by_path.json()["neighbours"], cli["neighbours"])
        assert api.get("/api/health").json() == {"status": "ok"}
        ready = api.get("/api/ready").json()
        assert ready["ready"] and ready["images"] == 8


def test_verify_classify_and_duplicate_pages(tmp_path: Path, indexed: list[Path], make_photos) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p" / "copy.png").write_bytes(indexed[0].read_bytes())
    assert invoke("index", "p", "--index", "idx", "--workers", "0", cwd=tmp_path).exit_code == 0
    for name, seeds in (("red", (0, 1)), ("blue", (2, 3))):
        (tmp_path / "support" / name).mkdir(parents=True)
        for seed in seeds:
            photo(seed).save(tmp_path / "support" / name / f"{seed}.png")
    with client(tmp_path) as api:
        same = api.post("/api/verify", files={"a": ("a.png", indexed[1].read_bytes()),
                                              "b": ("b.png", indexed[1].read_bytes())}, data={"threshold": "0.1"})
        assert same.status_code == 200 and same.json()["same"] is True
        assert same.json()["distance"] == pytest.approx(0.0, abs=DISTANCE_TOLERANCE)
        good = indexed[1].read_bytes()
        for a, b, named in ((b"not an image", good, "a.png"), (good, b"not an image", "b.png"),
                            (b"not an image", b"nor this", "a.png")):  # of two failures, a's is reported
            pair = api.post("/api/verify", files={"a": ("a.png", a), "b": ("b.png", b)}, data={"threshold": "0.1"})
            assert pair.status_code == 422 and pair.json()["detail"].startswith(f"{named}: "), pair.text
        buffer = io.BytesIO()
        photo(2).save(buffer, format="PNG")
        classified = api.post("/api/classify", files={"image": ("q.png", buffer.getvalue())},
                              data={"support": str(tmp_path / "support")})
        assert classified.status_code == 200, classified.text
        assert classified.json()["nearest_label"] == "blue"
        page = api.get("/api/duplicates", params={"threshold": 0.001, "per_page": 1}).json()
        assert page["total"] == 1 and page["pairs"]["method"] == "exact"
        [group] = page["groups"]
        assert {group["keeper"]["path"], group["duplicates"][0]["path"]} == {str(indexed[0]),
                                                                            str(tmp_path / "p" / "copy.png")}
        assert api.get("/api/duplicates", params={"threshold": 0.001, "page": 2, "per_page": 1}).json()["groups"] == []


def test_bad_requests_get_a_four_hundred_with_one_line(tmp_path: Path, indexed: list[Path]) -> None:
    with client(tmp_path, limits=Limits(max_upload_bytes=2000, max_pixels=1000)) as api:
        too_big = api.post("/api/query", files={"image": ("big.bin", b"x" * 3000)})
        assert too_big.status_code == 413 and "larger than 2,000 bytes" in too_big.json()["detail"]
        broken = api.post("/api/query", files={"image": ("broken.png", b"not an image")})
        assert broken.status_code == 422 and broken.json()["detail"].startswith("broken.png: ")
        bomb = api.post("/api/query", files={"image": ("bomb.png", png_header_bomb(40_000, 40_000))})
        assert bomb.status_code == 422 and "exceeds the limit" in bomb.json()["detail"]
        assert api.post("/api/query", data={"k": "3"}).status_code == 415, "a form that is not multipart"
        assert api.post("/api/query", files={"other": ("o.png", b"x")}).status_code == 422
        assert api.post("/api/query", json={"path": "/nowhere.png"}).status_code == 404
        bad_k = api.post("/api/query", json={"path": str(indexed[0]), "k": 0})
        assert bad_k.status_code == 422 and "\n" not in bad_k.json()["detail"]
        assert api.get("/api/duplicates", params={"per_page": 100000}).status_code == 422
        assert api.post("/api/images", json={"paths": ["/no/such/folder"]}).status_code == 404


def test_a_token_guards_every_route_but_health(tmp_path: Path, indexed: list[Path]) -> None:
    with client(tmp_path, token="s3cret") as api:
        assert api.get("/api/health").status_code == 200
        assert api.get("/api/ready").status_code == 401
        wrong = api.post("/api/query", json={"path": str(indexed[0])}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = api.post("/api/query", json={"path": str(indexed[0])}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200


def test_the_hosts_answered_are_loopback_and_those_given(tmp_path: Path, indexed: list[Path]) -> None:
    app = create_app(tmp_path / "idx", hosts=["192.168.1.5", "fd00::5", "Photos.Example"])
    for url, status in (("http://192.168.1.5:8000", 200), ("http://[fd00::5]:8000", 200),
                        ("http://photos.example", 200), ("http://[::1]:8000", 200), ("http://10.0.0.1", 400),
                        ("http://photos.example.evil", 400)):
        with TestClient(app, base_url=url) as api:
            assert api.get("/api/health").status_code == status, url


def test_serve_refuses_to_listen_beyond_loopback_without_a_token_or_its_names(tmp_path: Path, indexed: list[Path]
                                                                               ) -> None:
    from conftest import assert_one_line_error

    assert_one_line_error(invoke("serve", "--index", "idx", "--host", "0.0.0.0", cwd=tmp_path), "needs a token")
    for every_address in ("0.0.0.0", "::"):  # no Host header names it: the names clients use must be given
        assert_one_line_error(invoke("serve", "--index", "idx", "--host", every_address, "--token", "t", cwd=tmp_path),
                              "--allow-host NAME")


def test_the_server_sees_the_index_change_without_a_restart(tmp_path: Path, indexed: list[Path],
                                                           make_photos) -> None:  # type: ignore[no-untyped-def]
    with client(tmp_path) as api:
        assert api.get("/api/ready").json()["images"] == 8
        more = make_photos(tmp_path / "more", 3, start=50)
        assert invoke("index", "more", "--index", "idx", "--workers", "0", cwd=tmp_path).exit_code == 0
        assert api.get("/api/ready").json()["images"] == 11
        hit = api.post("/api/query", json={"path": str(more[1]), "k": 1}).json()
        assert hit["neighbours"][0]["path"] == str(more[1])
        removed = api.request("DELETE", "/api/images", json={"paths": [str(more[1])]}).json()
        assert removed == {"removed": 1, "not_indexed": []}
        assert api.post("/api/query", json={"path": str(more[1])}).status_code == 404
        added = api.post("/api/images", json={"paths": [str(tmp_path / "more")]}).json()
        assert added["added"] == 1 and added["unchanged"] == 2


def test_concurrent_uploads_are_embedded_in_one_batch(tmp_path: Path, indexed: list[Path]) -> None:
    import httpx

    app = create_app(tmp_path / "idx")

    async def many() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=URL, headers=API_CLIENT) as api:
            answers = await asyncio.gather(*[
                api.post("/api/query", files={"image": (f"{i}.png", indexed[i].read_bytes())}) for i in range(8)])
        return [answer.status_code for answer in answers]

    assert asyncio.run(many()) == [200] * 8
    batcher = app.state.server.served.collection()[1]
    assert max(batcher.batch_sizes) > 1 and sum(batcher.batch_sizes) == 8


def test_requests_beyond_the_limit_are_turned_away(tmp_path: Path, indexed: list[Path]) -> None:
    with client(tmp_path, limits=Limits(max_in_flight=0)) as api:
        busy = api.post("/api/query", json={"path": str(indexed[0])})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert api.get("/api/health").status_code == 200, "health answers however busy"


def test_a_threshold_that_finds_too_many_pairs_is_refused_before_the_work(tmp_path: Path, indexed: list[Path]
                                                                         ) -> None:
    with client(tmp_path, limits=Limits(max_duplicate_pairs=27)) as api:
        everything = api.get("/api/duplicates", params={"threshold": 4})  # 28 pairs: every two of the 8 images
        assert everything.status_code == 422 and "lower the threshold" in everything.json()["detail"]
        assert api.get("/api/duplicates", params={"threshold": 0.001}).status_code == 200
    with client(tmp_path, limits=Limits(max_duplicate_pairs=28)) as api:
        within = api.get("/api/duplicates", params={"threshold": 4})
        # 28 pairs are within 28; none is proposed: these 64x48 photos are tiny, judged on pixels, and they differ
        assert within.status_code == 200 and within.json()["total"] == 0, within.text


def test_duplicate_groups_are_found_off_the_event_loop(tmp_path: Path, indexed: list[Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from retrieval.collection import Collection

    release = threading.Event()
    find_duplicates = Collection.find_duplicates

    def held(self: Collection, *args: object, **options: object) -> object:
        assert release.wait(5), "held until health answered: it never did, the event loop was blocked"
        return find_duplicates(self, *args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(Collection, "find_duplicates", held)
    app = create_app(tmp_path / "idx")

    async def meanwhile() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=URL,
                                     headers=API_CLIENT) as api:
            groups = asyncio.create_task(api.get("/api/duplicates", params={"threshold": 0.001}))
            await asyncio.sleep(0.1)  # the search has started
            health = await api.get("/api/health")
            release.set()
            return health.status_code, (await groups).status_code

    assert asyncio.run(meanwhile()) == (200, 200)
