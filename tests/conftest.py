"""What the tests share: a tiny seeded model (fast to run), synthetic photo and character folders, the command line
as a user meets it, and a fast indexing run. Tests import these from here, never from each other."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import process_sessions
from cli.main import app
from indexer.pipeline import IndexOptions, index_paths
from postgres_server import PostgresServer
from postgres_server import missing_reason as postgres_missing_reason
from retrieval.datasets.locate import datasets_root
from retrieval.index import SimilarityIndex
from retrieval.models.model import EmbeddingModel, build_model, load_model
from retrieval.models.model_spec import ModelSpec
from retrieval.sources.images import Preprocessing

REPO = Path(__file__).resolve().parents[1]
SHARED = datasets_root()


def tiny_spec(name: str = "tiny", side: int = 32) -> ModelSpec:
    return ModelSpec(name=name, backbone="small-cnn", embedding_dim=16,
                     preprocessing=Preprocessing(size=(side, side), mode="RGB", mean=127.5, std=64.0),
                     backbone_options={"channels": [8, 8]})


def save_tiny_model(path: Path, seed: int, side: int = 32) -> Path:
    torch.manual_seed(seed)
    build_model(tiny_spec(f"tiny-{seed}", side)).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", seed=0)


@pytest.fixture
def tiny(tiny_model_file: Path) -> EmbeddingModel:
    return load_model(tiny_model_file)


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A distinct, smooth colour image: a blurred random field, so that small edits keep it close."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    return Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def make_photos() -> Callable[..., list[Path]]:
    def make(folder: Path, count: int, start: int = 0, suffix: str = ".png",
             size: tuple[int, int] = (64, 48)) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(start, start + count):
            path = folder / f"img{i:04d}{suffix}"
            photo(i, size).save(path)
            paths.append(path)
        return paths

    return make


def decision_photos(folder: Path) -> Path:
    """Five distinct photos a-e; `a` has a byte-identical copy and a half-size copy (more pixels win the keeper)."""
    folder.mkdir(parents=True)
    for i, name in enumerate("abcde"):
        photo(i, (128, 96)).save(folder / f"{name}.png")
    shutil.copy(folder / "a.png", folder / "a-copy.png")
    photo(0, (64, 48)).save(folder / "a-small.png")
    return folder


def require_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/datasets not found ({path} is missing): the test needs the shared datasets")
    return path


# --- the command line, as tests meet it ---------------------------------------------------------------

runner = CliRunner()


def invoke(*args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("SIMSEARCH_INDEX", raising=False)
        return runner.invoke(app, list(args), env=env, input=input)


def simsearch(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `simsearch` command in a process of its own, from `cwd`: what a user's shell runs, with the environment
    the tests began with (no variable a Ray joined in this process set). It runs in a session of its own, killed
    whole when it ends, runs past `timeout` or the run is interrupted: a local Ray it started never outlives it."""
    return process_sessions.run([sys.executable, "-m", "cli", *args], timeout, cwd=cwd, capture_output=True,
                                text=True, env=process_sessions.child_environment({"PYTHONPATH": str(REPO),
                                                                                    **(env or {})}))


def simsearch_process(*args: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """The `simsearch` command started in a process of its own that keeps running (a server), from `cwd`, its
    output going to the file `log`; the caller stops it."""
    with log.open("wb") as output:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=cwd, stdout=output,
                                stderr=subprocess.STDOUT,
                                env=process_sessions.child_environment({"PYTHONPATH": str(REPO)}))


@contextmanager
def serving_in_thread(app: object, log_level: str = "warning", wait_seconds: float = 30) -> Iterator[str]:
    """`app` (an ASGI app) served by uvicorn on a free loopback port in a thread while the block runs: its URL."""
    import threading
    import time

    import uvicorn

    from postgres_server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + wait_seconds
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(wait_seconds)

@contextmanager
def headless_chromium(chromium: str, driver_path: str, wait_seconds: float,
                      log_browser: bool = False) -> Iterator[object]:
    """A selenium driver of Debian's headless chromium (1280x900, a profile of its own, nothing fetched in the
    background) while the block runs; with `log_browser`, the page's console is kept for the test to read."""
    import tempfile

    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="simsearch-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if log_browser:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(wait_seconds)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

def assert_one_line_error(result, text: str) -> None:  # type: ignore[no-untyped-def]
    assert_one_line_output(result.exit_code, result.output, text)


def assert_one_line_output(exit_code: int, output: str, text: str, beside: str | None = None) -> None:
    """Exit 2 and one line of output, the error, naming `text` (lines containing `beside`, such as a progress bar,
    aside); no traceback."""
    assert exit_code == 2, output
    lines = [line for line in output.splitlines() if line.strip() and (beside is None or beside not in line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], output
    assert "Traceback" not in output


# --- labelled folders and tensors for training -----------------------------------------------------------

TINY = ["--embedding-dim", "16", "-P", "4", "-K", "3", "--steps-per-epoch", "6", "--workers", "0"]


def make_characters(root: Path, classes: int = 8, per_class: int = 5, flat: bool = False) -> Path:
    """Each class a random stroke; its images the same stroke shifted by a pixel or two."""
    for c in range(classes):
        rng = random.Random(c)
        points = [(rng.randint(8, 52), rng.randint(8, 52)) for _ in range(4)]
        folder = root if flat else root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("L", (60, 60), 255)
            ImageDraw.Draw(image).line([(x + i % 3, y + i // 3) for x, y in points], fill=0, width=4)
            image.save(folder / f"c{c}-{i}.png")
    return root


def synthetic(classes: int = 12, per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    base = torch.rand(classes, 42, 42, 1, generator=generator)
    noise = torch.rand(len(labels), 42, 42, 1, generator=generator)
    return ((0.7 * base[labels] + 0.3 * noise) * 255).to(torch.uint8), labels


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Three classes, each a photo and two resized copies of it."""
    for label, seed in (("red", 0), ("green", 1), ("blue", 2)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i, size in enumerate([(96, 72), (80, 60), (64, 48)]):
            photo(seed, size).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path


# --- indexing -------------------------------------------------------------------------------------------------

INDEX_FAST = IndexOptions(batch_size=4, workers=0, max_pixels=10_000_000)


def run(index: SimilarityIndex, paths: list[Path], model: EmbeddingModel, **options: object):  # type: ignore[no-untyped-def]
    opts = IndexOptions(**{**INDEX_FAST.__dict__, **options})  # type: ignore[arg-type]
    return index_paths(index, paths, model, opts)


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session; tests that need it skip, saying why, where none can run."""
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of an index on each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))
