"""The HTTP service: API tests with FastAPI's test client, and one real-browser test."""

import base64
import io
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tailedcore import PatchCore, load
from tailedcore.app.serve import create_app
from tailedcore.runtimes import export

from .conftest import SMALL

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def detector(synthetic_root):
    model = PatchCore(**SMALL).fit(synthetic_root)
    model.calibrate([synthetic_root / name / "test" / "good" for name in ("stripes", "checker")])
    return model


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """The same model, exported to ONNX and loaded from its export folder (features by ONNX Runtime)."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("export") / "onnx"
    detector.save(folder.parent / "model.safetensors")
    export(load(folder.parent / "model.safetensors"), folder, "onnx")
    return load(folder)


@pytest.fixture(scope="module")
def client(detector):
    return TestClient(create_app(detector, max_bytes=200_000, max_pixels=1_000_000))


def png(path) -> bytes:
    return path.read_bytes()


def test_health_and_model(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["method"] == "patchcore" and info["backbone"] == "efficientnet-lite0"
    assert info["thresholds"]["image"] > 0 and info["memory_size"] > 0 and "training" in info


def test_predict_defect_and_normal(client, synthetic_root):
    bad = synthetic_root / "stripes" / "test" / "defect" / "000.png"
    answer = client.post("/predict", files={"file": ("bad.png", png(bad), "image/png")}).json()
    assert answer["decision"] == "defect" and answer["score"] > 0.5 and answer["raw_score"] > 0
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay"])))
    mask = Image.open(io.BytesIO(base64.b64decode(answer["mask"])))
    assert overlay.size == (64, 64) and mask.size == (64, 64)
    assert np.asarray(mask).any()
    good = synthetic_root / "stripes" / "train" / "good" / "000.png"
    answer = client.post("/predict", files={"file": ("good.png", png(good), "image/png")}).json()
    assert answer["decision"] == "ok" and answer["score"] < 0.5
    assert not np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"])))).any()  # no mask when ok


def test_upload_limits(client, synthetic_root):
    image = png(synthetic_root / "dots" / "train" / "good" / "000.png")
    assert client.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")}).status_code == 415
    assert client.post("/predict", files={"file": ("a.png", b"not really a png", "image/png")}).status_code == 400
    big = client.post("/predict", files={"file": ("a.png", image + b"\0" * 300_000, "image/png")})
    assert big.status_code == 413
    buffer = io.BytesIO()
    Image.new("L", (1200, 1000)).save(buffer, format="PNG")
    huge = client.post("/predict", files={"file": ("huge.png", buffer.getvalue(), "image/png")})
    assert huge.status_code == 413 and "pixel limit" in huge.json()["detail"]
    assert client.post("/predict").status_code == 422


def test_unreadable_upload_names_the_file_without_internals(client):
    answer = client.post("/predict", files={"file": ("a.png", b"not really a png", "image/png")})
    assert answer.status_code == 400
    assert "'a.png' is not a readable image" in answer.json()["detail"] and "BytesIO" not in answer.json()["detail"]


def test_max_pixels_is_the_one_pixel_limit(detector, synthetic_root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own limit below the 96 x 96 test images
    image = png(synthetic_root / "dots" / "train" / "good" / "000.png")
    above_pillow = TestClient(create_app(detector, max_pixels=20_000))
    assert above_pillow.post("/predict", files={"file": ("a.png", image, "image/png")}).status_code == 200
    below_image = TestClient(create_app(detector, max_pixels=5_000))
    answer = below_image.post("/predict", files={"file": ("a.png", image, "image/png")})
    assert answer.status_code == 413 and "pixel limit" in answer.json()["detail"]


def test_busy_port_is_one_line_and_exit_status_1(detector, tmp_path, capsys):
    from tailedcore.app.cli import main

    model = tmp_path / "model.safetensors"
    detector.save(model)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--quiet", "serve", str(model), "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"127.0.0.1:{port}" in captured.err and not captured.out


def test_serve_command_uses_the_models_search_and_batches_unless_told(detector, tmp_path, monkeypatch):
    from tailedcore.app import serve as serve_module
    from tailedcore.app.cli import main
    from tailedcore.scoring import SERVING_SEARCH

    model = tmp_path / "model.safetensors"
    detector.save(model)
    serving = tmp_path / "serving.safetensors"
    load(model).set_params(**SERVING_SEARCH).save(serving)
    served = []
    monkeypatch.setattr(serve_module, "serve", lambda detector, *args, **limits: served.append((detector, limits)))
    assert main(["--quiet", "serve", str(model)]) == 0
    assert main(["--quiet", "serve", str(serving)]) == 0
    assert main(["--quiet", "serve", str(serving), "--search", "exact", "--max-batch", "1"]) == 0
    assert main(["--quiet", "serve", str(serving), "--search-option", "nprobe=4"]) == 0
    (own, own_limits), (default, _), (exact, exact_limits), (probes, _) = served
    assert own.search.kind == detector.search.kind == "exact" and own_limits["max_batch"] == 8
    assert default.search_setting == SERVING_SEARCH
    assert (exact.search.kind, exact.search.options, exact_limits["max_batch"]) == ("exact", None, 1)
    assert (probes.search.kind, probes.search.options) == ("ivf-batched", {"nprobe": 4})


def test_each_scored_batch_returns_the_freed_heap(detector, synthetic_root, monkeypatch):
    from tailedcore.app import serve as serve_module

    trims = []
    monkeypatch.setattr(serve_module, "trim_heap", lambda: trims.append(1))
    served = TestClient(create_app(detector, max_batch=2))
    image = synthetic_root / "stripes" / "test" / "good" / "000.png"
    for _ in range(3):
        assert served.post("/predict", files={"file": ("x.png", png(image), "image/png")}).status_code == 200
    assert len(trims) == 3


def test_concurrent_requests_agree(client, synthetic_root):
    files = sorted((synthetic_root / "checker" / "test").rglob("*.png"))
    single = [client.post("/predict", files={"file": (f.name, png(f), "image/png")}).json()["raw_score"] for f in files]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(
            lambda f: client.post("/predict", files={"file": (f.name, png(f), "image/png")}).json()["raw_score"],
            files))
    assert parallel == single


def test_concurrent_requests_are_batched_and_agree(detector, synthetic_root, monkeypatch):
    sizes = []
    score_batch = detector.predict_images

    def recorded(images, names):
        sizes.append(len(images))
        time.sleep(0.2)  # a slow batch, so that the other requests queue meanwhile
        return score_batch(images, names)

    files = sorted((synthetic_root / "checker" / "test").rglob("*.png"))
    single = [detector.predict_images([Image.open(f)], [f.name]).image_scores[0] for f in files]
    monkeypatch.setattr(detector, "predict_images", recorded)
    batched = TestClient(create_app(detector, max_batch=4))
    with ThreadPoolExecutor(len(files)) as pool:
        answers = list(pool.map(
            lambda f: batched.post("/predict", files={"file": (f.name, png(f), "image/png")}).json(), files))
    assert max(sizes) > 1 and sum(sizes) == len(files) and max(sizes) <= 4
    assert [a["filename"] for a in answers] == [f.name for f in files]
    np.testing.assert_allclose([a["raw_score"] for a in answers], single, rtol=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_exported_model_answers_as_the_model_file(client, exported, synthetic_root):
    exported_client = TestClient(create_app(exported, max_bytes=200_000, max_pixels=1_000_000))
    assert exported_client.get("/model").json()["memory_size"] == client.get("/model").json()["memory_size"]
    for image in ("defect/000.png", "good/000.png"):
        payload = {"file": ("x.png", png(synthetic_root / "stripes" / "test" / image), "image/png")}
        want = client.post("/predict", files=payload).json()
        got = exported_client.post("/predict", files=payload).json()
        assert got["decision"] == want["decision"]
        assert abs(got["raw_score"] - want["raw_score"]) <= 1e-4 * want["raw_score"]


@pytest.mark.parametrize("model", ["detector", "exported"])
def test_browser_drop_image_shows_result(model, request, synthetic_root, tmp_path):
    if CHROMIUM is None:
        pytest.fail("Chromium not found: install the Debian package 'chromium' (make test installs it)", pytrace=False)
    detector = request.getfixturevalue(model)
    uvicorn = pytest.importorskip("uvicorn")
    playwright_api = pytest.importorskip("playwright.sync_api")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(detector), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        with playwright_api.sync_playwright() as play:
            browser = play.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("text=calibrated")
            image = synthetic_root / "stripes" / "test" / "defect" / "001.png"
            answer = detector.predict([image])
            page.set_input_files("#files", str(image))
            page.wait_for_selector(".result .decision", timeout=30_000)
            assert answer.verdicts[0] != "ok"
            assert page.inner_text(".result .decision") == answer.verdicts[0]
            css_class = "decision " + answer.verdicts[0].replace(" ", "-")
            assert page.get_attribute(".result .decision", "class") == css_class
            assert f"product {answer.products[0]}" in page.inner_text(".result .score")
            assert page.get_attribute(".result img", "src").startswith("data:image/png;base64,")
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_model_says_how_many_images_the_thresholds_rest_on(client):
    thresholds = client.get("/model").json()["thresholds"]
    assert thresholds["images"] == 6 and thresholds["few_images"] is True  # 6 normal images at a 1% false-alarm rate


def test_answers_carry_the_product_and_its_threshold(client, synthetic_root):
    payload = {"file": ("x.png", png(synthetic_root / "stripes" / "test" / "good" / "000.png"), "image/png")}
    answer = client.post("/predict", files=payload).json()
    products = client.get("/model").json()["products"]
    assert answer["product"] in [p["product"] for p in products]
    assert answer["unknown_product"] is False and answer["decision"] in ("ok", "defect")
    assert answer["threshold_of"] in ("product", "global") and answer["threshold"] > 0
    assert answer["score"] == pytest.approx(answer["raw_score"] / answer["threshold"]
                                            / (1 + answer["raw_score"] / answer["threshold"]))


def test_model_gives_every_product_the_threshold_its_answers_use(client, synthetic_root):
    payload = {"file": ("x.png", png(synthetic_root / "stripes" / "test" / "good" / "000.png"), "image/png")}
    answer = client.post("/predict", files=payload).json()
    model = client.get("/model").json()
    entry = next(p for p in model["products"] if p["product"] == answer["product"])
    assert (entry["threshold"], entry["threshold_of"]) == (answer["threshold"], answer["threshold_of"])
    for product in model["products"]:
        assert product["threshold_of"] in ("product", "global")
        if product["threshold_of"] == "global":
            assert product["threshold"] == model["thresholds"]["image"]


def test_the_scoring_thread_ends_with_the_service(detector, synthetic_root):
    """A service that shuts down lets its scoring thread (and with it the model) go."""
    app = create_app(detector)
    image = synthetic_root / "stripes" / "test" / "good" / "000.png"
    with TestClient(app) as served:
        assert served.post("/predict", files={"file": ("x.png", png(image), "image/png")}).status_code == 200
        assert app.state.batcher.thread.is_alive()
    app.state.batcher.thread.join(timeout=10)
    assert not app.state.batcher.thread.is_alive()
