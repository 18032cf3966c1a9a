"""The search page in a real browser (Debian's chromium, driven by Playwright): two runs trained
on a few real ETH-80 objects are served; a photo uploaded, or one of the dataset's query photos
picked, is answered by both side by side.

``SAVE_DOCS_SCREENSHOT=1 python -m pytest -q tests/test_page_browser.py`` also writes the page
as the docs show it: docs/img/search-page.png.
"""
import json
import os
import re
import shutil
import socket
import threading
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETH80 = os.path.join(REPO, "..", "shared", "data", "eth80")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# one object per category; query photos from 22 degrees off the vertical, catalogue views from
# 68 degrees (the side): only these images are copied and embedded
OBJECTS = ["apple1", "car1", "cow1", "cup1", "horse1", "pear1"]
COPIED = re.compile(r"-0(22|68)-")
UPLOAD = "cow1"  # its 45-degree photo is uploaded: a viewpoint neither trained on nor in the catalogue
NAMES = ("OneVision", "VisualKNN")  # served in this order: the page's default left and right runs
WAIT_MS = 60_000  # the first photo search loads the image encoder; a loaded 2-core machine is slow


def category(obj):
    return obj.rstrip("0123456789")


def held_out_photo(obj):
    return os.path.join(ETH80, category(obj), obj, f"{obj}-045-000.jpg")


def require_browser_and_data():
    if not os.path.isfile(CHROMIUM):
        if os.environ.get("CI") == "true":  # .ci/run installs it: missing there is a broken setup
            pytest.fail(f"{CHROMIUM} not found in CI (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    if not os.path.isdir(ETH80):
        pytest.skip(f"ETH-80 photos not found at {ETH80} (../shared/data is absent on this machine)")
    pytest.importorskip("efficientnet_lite_pytorch", reason='image packages not installed: pip install -e ".[images]"')
    pytest.importorskip("PIL", reason='image packages not installed: pip install -e ".[images]"')
    pytest.importorskip("uvicorn", reason='service packages not installed: pip install -e ".[serve]"')
    pytest.importorskip("playwright.sync_api", reason='browser driver not installed: pip install -e ".[test]"')


def train(root):
    """VisualKNN, and a tiny OneVision (raw-feature SIDs, 3 pretrain epochs: its visual bias
    already ranks the photo's object first here) on the sample: name -> checkpoint."""
    from recbole_onevision.preprocess import image_folder
    from recbole_onevision.quick_start import run

    for obj in OBJECTS:
        src, dst = os.path.join(ETH80, category(obj), obj), root / "eth" / category(obj) / obj
        dst.mkdir(parents=True)
        for name in sorted(os.listdir(src)):
            if COPIED.search(name):
                shutil.copy(os.path.join(src, name), dst / name)
    image_folder.convert(str(root / "eth"), str(root / "data"), "ethpage", query_pattern="-022-", show_progress=False)
    # 6 items: the protocol's top 10 (and its NDCG@10 selection) would be refused
    common = {"data_path": str(root / "data"), "checkpoint_dir": str(root / "saved"), "show_progress": False,
              "state": "WARNING", "topk": [1, 5], "valid_metric": "NDCG@5"}
    sizes = {"OneVision": {"d_model": 32, "ffn_size": 64, "vrq_align": False, "stages": {"pretrain": {"epochs": 3}}},
             "VisualKNN": {"epochs": 1}}
    # the converter named image-folder.yaml's protocol beside the data: no config file needed
    return {name: run(name, "ethpage", config_dict={**common, **sizes[name]})["checkpoint"] for name in NAMES}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The two runs served on 127.0.0.1 (uvicorn in a thread): (base url, dataset folder)."""
    require_browser_and_data()
    import torch
    import uvicorn

    from recbole_onevision.search import Searcher
    from recbole_onevision.serve.app import create_app

    # one torch thread: on a small machine shared with other jobs, two threads contend and this
    # tiny training runs several times slower (12 s against 45 s on a loaded 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("page")
        checkpoints = train(root)
        app = create_app({name: Searcher.from_checkpoint(checkpoints[name]) for name in NAMES})
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no other process can take it
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", root / "data" / "ethpage"
        server.should_exit = True
        thread.join(10)
        sock.close()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; ``page.problems`` collects console errors and uncaught exceptions."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.problems = []
    page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))
    page.on("pageerror", lambda error: page.problems.append(f"uncaught: {error}"))
    yield page
    page.close()


# Resolves once the image has loaded (true) or failed (false): an <img> just attached may still be loading.
IMAGE_LOADED = """img => img.complete ? img.naturalWidth > 0 : new Promise(done => {
    img.addEventListener("load", () => done(img.naturalWidth > 0));
    img.addEventListener("error", () => done(false));
})"""


def grid(page, name):
    return page.locator(f'.results-grid[data-model="{name}"]')


def wait_for_results(page, name):
    """The cards of ``name``'s grid once its answer is shown (the grid is no longer busy)."""
    page.wait_for_selector(f'.results-grid[data-model="{name}"]:not([aria-busy]) li.card')
    return grid(page, name).locator("li.card")


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("#model-a option", state="attached")  # /models answered and the selects filled


def test_an_uploaded_photo_is_answered_by_both_runs_side_by_side(served, page, tmp_path):
    url, _ = served
    open_page(page, url)
    assert (page.input_value("#model-a"), page.input_value("#model-b")) == NAMES  # the first two by default
    page.set_input_files("#photo", held_out_photo(UPLOAD))  # searches at once
    for name in NAMES:
        cards = wait_for_results(page, name)
        # both rank the pictured object first (OneVision too: its trained visual bias scores the
        # photo's best-view cosine, so three epochs suffice on six objects from six categories)
        first = cards.first
        assert first.get_attribute("data-item") == UPLOAD and first.get_attribute("data-rank") == "1"
        assert cards.count() == len(OBJECTS)  # k = 10, and the catalogue holds six
        assert first.locator(".category").inner_text() == category(UPLOAD)
        assert re.fullmatch(r"-?\d+\.\d{3}", first.locator(".score").inner_text())
        # the card shows the item's first catalogue view, served by /images
        first.locator(".thumb img").wait_for()
        assert first.locator(".thumb img").evaluate(IMAGE_LOADED)
        assert grid(page, name).locator(".flag").get_attribute("data-personalised") == "false"
        assert "retrieved 6 items" in grid(page, name).locator(".note").inner_text()
        assert grid(page, name).locator(".error").inner_text() == ""
    sids = grid(page, "OneVision").locator("li.card .sid").all_inner_texts()
    assert all(re.fullmatch(r"\d+(-\d+)+", sid) for sid in sids) and len(set(sids)) == len(sids)
    assert grid(page, "VisualKNN").locator("li.card .sid").first.inner_text() == "–"  # raw features: no SIDs
    page.wait_for_function("() => [...document.images].every(img => img.complete)")
    page.screenshot(path=str(tmp_path / "search-page.png"), full_page=True)
    if os.environ.get("SAVE_DOCS_SCREENSHOT"):
        save_docs_screenshot(tmp_path / "search-page.png")
    assert page.problems == []


def test_an_example_photo_and_a_user_and_a_refused_k(served, page):
    url, _ = served
    open_page(page, url)
    examples = page.locator(".example")
    examples.first.wait_for()
    assert examples.count() == 12  # of the 24 query photos, spread over the catalogue
    example = page.locator('.example[data-product="car1"]').first
    example.click()
    for name in NAMES:
        assert wait_for_results(page, name).first.get_attribute("data-item") == "car1"
        assert grid(page, name).locator("li.card.match").get_attribute("data-item") == "car1"
    assert example.get_attribute("aria-pressed") == "true"
    # a user of the dataset (a one-off session of car1's photo): both answers are personalised
    user = page.locator('#user option[value$="car1-022-000"]').get_attribute("value")
    page.select_option("#user", user)
    page.click("#search-button")
    for name in NAMES:
        page.wait_for_selector(f'.results-grid[data-model="{name}"] .flag[data-personalised="true"]')
        assert wait_for_results(page, name).first.get_attribute("data-item") == "car1"
    # a k the service refuses: its JSON error is shown in each grid
    page.fill("#k", "500")
    page.click("#search-button")
    from playwright.sync_api import expect

    for name in NAMES:  # expect re-finds the error as the grid is redrawn
        expect(grid(page, name).locator(".error")).to_contain_text("k: expected an integer from 1 to 100, got 500",
                                                                  timeout=WAIT_MS)
        assert grid(page, name).locator("li.card").count() == 0
    # the browser logs each refused request (422); nothing else may be logged
    assert [p for p in page.problems if "status of 422" not in p] == []


def test_a_run_without_an_image_encoder_is_searched_by_embedding(served, page):
    """An embeddings-only dataset (e.g. MVShop): /models reports accepts_images false for it
    (simulated here for VisualKNN), so the page says photos can't be uploaded for that run and
    offers a pasted embedding, which the service accepts for any run."""
    url, folder = served

    def photo_less(route):
        models = route.fetch().json()
        for m in models:
            m["accepts_images"] = m["accepts_images"] and m["name"] != "VisualKNN"
        route.fulfill(json=models)

    page.route("**/models", photo_less)
    open_page(page, url)
    assert "Photos can't be uploaded for VisualKNN" in page.inner_text("#photo-note")
    assert page.locator("#embedding-box").get_attribute("open") is not None
    page.set_input_files("#photo", held_out_photo(UPLOAD))
    assert wait_for_results(page, "OneVision").first.get_attribute("data-item") == UPLOAD
    assert "Photos can't be uploaded for VisualKNN" in grid(page, "VisualKNN").locator(".error").inner_text()
    # a query photo of apple1 (one far from the other objects' views), as its embedding
    ids = [line.split("\t")[0] for line in open(folder / "ethpage.query", encoding="utf-8")][1:]
    vector = np.load(folder / "ethpage.query.npy")[[i.endswith("apple1-022-180") for i in ids].index(True)]
    page.fill("#embedding", json.dumps([round(float(v), 6) for v in vector]))
    page.click("#embedding-search")
    for name in NAMES:
        first = f'.results-grid[data-model="{name}"]:not([aria-busy]) li.card[data-rank="1"]'
        page.wait_for_selector(f'{first}[data-item="apple1"]')
    assert page.problems == []


def save_docs_screenshot(path):
    """docs/img/search-page.png, palette-quantised to stay small (the photos make a plain PNG heavy)."""
    from PIL import Image

    out = os.path.join(REPO, "docs", "img", "search-page.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
