"""An HTTP service around one model: ``tailedcore serve MODEL``.

- ``POST /predict``: multipart upload (field ``file``) -> JSON with the
  normalised ``score`` (0.5 = the image's threshold), ``raw_score``, ``decision``
  ("ok", "defect" or "unknown product"), the image's ``product`` (the nearest one
  when unknown), ``unknown_product``, its ``threshold`` (raw) and ``threshold_of``
  ("product" or "global"), and the overlay and defect mask as base64 PNG.
- ``GET /health``, ``GET /model`` (method, backbone, thresholds with the number of
  images they rest on and ``few_images``, training summary, and per product the
  ``threshold`` and ``threshold_of`` its answers carry).
- ``GET /``: a page where a person drops images and sees decision, product, score, overlay.

Uploads are limited in size, pixel count and content type (clear 4xx
answers); one scoring thread takes requests in turn, so concurrent requests are safe, and with
``max_batch`` above 1 it scores the requests that arrived meanwhile as one batch.
"""

import base64
import io
import queue
import socket
import threading
import warnings
from concurrent.futures import Future
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError

from .._io import png_bytes
from ..data import preprocess
from ..detector import Detector
from ..predictions import Predictions
from ..report.render import prediction_images
from ..thresholds import thresholds_of_product
from ..timing import trim_heap

ACCEPTED_TYPES = {"image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp"}
DEFAULT_MAX_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000


def model_summary(detector: Detector) -> dict:
    params = {k: v for k, v in detector.params_config().items() if k != "run"}
    params["features"]["params"].pop("weights")  # a path on the server's disk
    return {
        "method": detector.method,
        "backbone": detector.backbone,
        "input": {"resize": detector.resize, "crop": detector.crop},
        "memory_size": len(detector.memory_),
        "thresholds": ({**detector.thresholds_.to_dict(), "few_images": detector.thresholds_.few_images}
                       if detector.thresholds_ else None),
        "training": detector.training_summary_,
        "products": (None if detector.products_ is None else
                     [{"product": product, "images": images, "role": role, "memory_rows": rows,
                       **_threshold_fields(detector, product)}
                      for product, images, role, rows in detector.products_.rows()]),
        "params": params,
    }


def _threshold_fields(detector: Detector, product: int) -> dict:
    """A product's image threshold (raw) and ``threshold_of``, as its answers carry them (None: not calibrated)."""
    thresholds, owner = thresholds_of_product(product, detector.thresholds_, detector.product_thresholds_)
    return {"threshold": None if thresholds is None else float(thresholds.image), "threshold_of": owner}


def _b64png(array) -> str:
    return base64.b64encode(png_bytes(array)).decode("ascii")


class Batcher:
    """Scores images one batch at a time: requests that arrive while a batch is scored wait and go
    together into the next one (at most ``max_batch`` images), so the backbone sees batches under load.

    ``score(image, name)`` blocks until its image is scored and returns its one-image Predictions.
    With ``max_batch`` 1 every request is scored alone, in arrival order. ``close()`` ends the scoring
    thread once the requests already queued are answered.
    """

    def __init__(self, detector: Detector, max_batch: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be at least 1")
        self.detector, self.max_batch = detector, max_batch
        self._queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, daemon=True, name="tailedcore-batcher")
        self.thread.start()

    def close(self) -> None:
        self._queue.put(None)

    def score(self, image: Image.Image, name: str) -> Predictions:
        done: Future = Future()
        self._queue.put((image, name, done))
        return done.result()

    def _work(self) -> None:
        closing = False
        while not closing:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            closing = None in batch
            batch = [item for item in batch if item is not None]
            if not batch:
                break
            try:
                predictions = self.detector.predict_images([item[0] for item in batch], [item[1] for item in batch])
            except Exception as error:  # noqa: BLE001 - handed to each waiting request, which raises it
                for *_, done in batch:
                    done.set_exception(error)
                continue
            finally:
                trim_heap()  # batches of every size leave freed blocks in the C heap: RSS would creep
            for index, (*_, done) in enumerate(batch):
                done.set_result(predictions.select(index))


def create_app(detector: Detector, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_batch: int = 1):
    """The FastAPI application serving ``detector``.

    ``max_pixels`` is the one pixel limit: Pillow's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, process-wide) is raised to it when lower.
    ``max_batch``: concurrent requests scored together, up to this many images (see Batcher).
    """
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    batcher = Batcher(detector, max_batch)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="tailedcore", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    summary = model_summary(detector)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "method": detector.method}

    @app.get("/model")
    def model() -> dict:
        return summary

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return PAGE

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:
        if (file.content_type or "").split(";")[0].strip().lower() not in ACCEPTED_TYPES:
            raise HTTPException(415, f"unsupported content type '{file.content_type}' "
                                     "(send PNG, JPEG, BMP, TIFF or WebP)")
        payload = file.file.read(max_bytes + 1)
        if len(payload) > max_bytes:
            raise HTTPException(413, f"file larger than {max_bytes // 2**20} MiB")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(payload))
                if image.width * image.height > max_pixels:
                    raise HTTPException(413, f"image of {image.width}x{image.height} pixels is over the "
                                             f"{max_pixels:,}-pixel limit")
                image.load()
        except HTTPException:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise HTTPException(413, f"image is over the {max_pixels:,}-pixel limit") from error
        except UnidentifiedImageError as error:
            raise HTTPException(400, f"'{file.filename}' is not a readable image (unknown format)") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise HTTPException(400, f"'{file.filename}' is not a readable image ({error})") from error
        predictions = batcher.score(image, file.filename or "upload")
        calibrated = predictions.thresholds is not None
        mask = predictions.defect_masks()[0] if calibrated else None
        picture = prediction_images(predictions, 0, preprocess(image, detector.resize, detector.crop), mask,
                                    float(predictions.anomaly_maps.min()), float(predictions.anomaly_maps.max()))
        return {
            "filename": file.filename, "score": None, "decision": None, "product": None, "unknown_product": None,
            **predictions.record(0),
            "calibrated": calibrated,
            "overlay": _b64png(picture),
            "mask": _b64png((mask * 255).astype("uint8")) if calibrated else None,
        }

    return app


def serve(detector: Detector, host: str = "127.0.0.1", port: int = 8000, **limits) -> None:
    """Serve ``detector`` until interrupted; a port that cannot be bound is an OSError naming it."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    listener.listen(2048)  # from here on a request waits for the service instead of being refused
    bound_port = listener.getsockname()[1]
    config = uvicorn.Config(create_app(detector, **limits), host=host, port=bound_port, log_level="info")
    address = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"tailedcore: serving on http://{address}:{bound_port}/ (Ctrl-C stops)", flush=True)
    uvicorn.Server(config).run(sockets=[listener])


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tailedcore</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 2.5em; text-align: center; color: #555; cursor: pointer; }
#drop.over { background: #eef5ff; border-color: #36c; }
#model { color: #666; font-size: 0.9em; margin-bottom: 1em; }
.result { display: flex; gap: 1em; align-items: center; border-bottom: 1px solid #ddd; padding: 0.8em 0; }
.result img { width: 224px; height: 224px; }
.decision { font-size: 1.4em; font-weight: 600; }
.ok { color: #1a7f37; } .defect { color: #c62828; } .error { color: #c62828; } .unknown-product { color: #8a5a00; }
</style></head><body>
<h1>tailedcore</h1>
<div id="model">loading model...</div>
<div id="drop">Drop images here, or click to choose files
<input id="files" type="file" accept="image/*" multiple hidden></div>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("files");
const results = document.getElementById("results");
fetch("/model").then(r => r.json()).then(m => {
  const t = m.thresholds ? "calibrated: " + m.thresholds.source : "not calibrated: scores only";
  const own = m.products ? m.products.filter(p => p.threshold_of === "product").length : 0;
  const p = m.products ? `; ${m.products.length} products, ${own} with their own threshold` : "";
  document.getElementById("model").textContent =
    `${m.method} on ${m.backbone}, ${m.memory_size} memory features; ${t}${p}`;
});
function show(name, data) {
  const row = document.createElement("div");
  row.className = "result";
  if (data.error) {
    row.innerHTML = `<div><b></b><div class="error"></div></div>`;
    row.querySelector("b").textContent = name;
    row.querySelector(".error").textContent = data.error;
  } else {
    const label = data.decision || "uncalibrated";
    let score = data.score === null ? "raw " + data.raw_score.toPrecision(4) : "score " + data.score.toFixed(3);
    if (data.product !== null) {
      score += data.unknown_product ? ` (nearest product ${data.product})` : ` (product ${data.product}, ` +
        `${data.threshold_of === "product" ? "its own" : "the global"} threshold)`;
    }
    row.innerHTML = `<img alt="overlay"><div><b></b><div class="decision"></div><div class="score"></div></div>`;
    row.querySelector("img").src = "data:image/png;base64," + data.overlay;
    row.querySelector("b").textContent = name;
    row.querySelector(".decision").textContent = label;
    row.querySelector(".decision").classList.add(label.replace(" ", "-"));
    row.querySelector(".score").textContent = score;
  }
  results.prepend(row);
}
async function send(files) {
  for (const file of files) {
    const body = new FormData();
    body.append("file", file);
    try {
      const response = await fetch("/predict", { method: "POST", body });
      const data = await response.json();
      show(file.name, response.ok ? data : { error: data.detail || response.statusText });
    } catch (e) { show(file.name, { error: String(e) }); }
  }
}
drop.addEventListener("click", () => input.click());
input.addEventListener("change", () => send(input.files));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files); });
</script></body></html>
"""
