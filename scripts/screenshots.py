"""Screenshots of the evaluation report and the served page, taken from the running code.

Builds a small real set (bottle + magnetic_tile from ../shared/data/real-ad,
hard-linked into a temporary folder), fits a calibrated PatchCore, writes the
evaluation report, serves the model on 127.0.0.1 and drops a defective image
on the page in headless Chromium.

    python scripts/screenshots.py --out docs/images
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from tailedcore import PatchCore
from tailedcore.app.serve import create_app
from tailedcore.evaluation import evaluate
from tailedcore.report.writers import write_evaluation

REAL_AD = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ad"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def small_real_set(dest: Path, train: int = 60, test_per_type: int = 6) -> Path:
    for name in ("bottle", "magnetic_tile"):
        source = REAL_AD / name
        for folder in sorted((source / "test").iterdir()):
            for image in sorted(folder.iterdir())[:test_per_type]:
                target = dest / name / "test" / folder.name / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(image, target)
                mask = source / "ground_truth" / folder.name / f"{image.stem}_mask.png"
                if mask.is_file():
                    (dest / name / "ground_truth" / folder.name).mkdir(parents=True, exist_ok=True)
                    os.link(mask, dest / name / "ground_truth" / folder.name / mask.name)
        for image in sorted((source / "train" / "good").iterdir())[:train]:
            target = dest / name / "train" / "good" / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(image, target)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as scratch:
        data = small_real_set(Path(scratch) / "data")
        model = PatchCore(calibration_share=0.2, progress=False).fit(data)
        evaluation_dir = Path(scratch) / "evaluation"
        write_evaluation(evaluate(model, data), evaluation_dir)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.1)
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((evaluation_dir / "report.html").as_uri())
            page.screenshot(path=str(out / "report.png"), full_page=True)
            page = browser.new_page(viewport={"width": 1000, "height": 820})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("text=calibrated")
            defects = sorted((data / "magnetic_tile" / "test" / "blowhole").iterdir())[:1]
            normal = sorted((data / "bottle" / "test" / "good").iterdir())[:1]
            page.set_input_files("#files", [str(p) for p in normal + defects])
            page.wait_for_function("document.querySelectorAll('.result').length == 2", timeout=60_000)
            page.screenshot(path=str(out / "serve.png"), full_page=True)
            browser.close()
        server.should_exit = True
        thread.join(timeout=10)
    print(f"screenshots -> {out}")


if __name__ == "__main__":
    main()
