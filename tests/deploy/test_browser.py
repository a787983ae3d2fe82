"""The demo in a real browser: headless Debian Chromium driven by Selenium.

Starts the app on a free localhost port, uploads a phantom PNG slice, presses Segment,
and checks that the overlay image appears and that the legend lists every class. The
screenshot goes to a temporary folder, or to ``docs/images/demo.png`` when
``UNETZOO_UPDATE_SCREENSHOT=1`` (then the phantom demo model is used if one is trained,
so the picture shows a real segmentation).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def driver():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver)")
    selenium = pytest.importorskip("selenium")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--disable-extensions"):
        opts.add_argument(arg)
    try:
        drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as exc:  # noqa: BLE001 - a broken browser install is a skip, not a failure
        pytest.skip(f"Chromium does not start headless here: {str(exc).splitlines()[0]}")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    pytest.importorskip("gradio")
    from unetzoo.deploy.demo_model import find_demo_checkpoint
    from unetzoo.deploy.webapp import launch

    checkpoints = [tiny_checkpoint]
    if os.environ.get("UNETZOO_UPDATE_SCREENSHOT") == "1" and find_demo_checkpoint():
        checkpoints = [find_demo_checkpoint()]
    port = _free_port()
    app = launch(checkpoints, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_upload_segment_overlay_legend(driver, server, phantom_files, phantom_case, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from unetzoo.data.listed import SYNAPSE_CLASSES

    wait = WebDriverWait(driver, 90)
    driver.get(server)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#run-btn")))

    file_input = wait.until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]"))
    )
    file_input.send_keys(str(phantom_files["png"]))
    # The upload is done when the file name shows in the component.
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#upload"), "phantom_slice"))
    gt_input = driver.find_element(By.CSS_SELECTOR, "#gt-upload input[type=file]")
    gt_input.send_keys(str(phantom_files["gt_png"]))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#gt-upload"), "phantom_slice_gt"))
    driver.find_element(By.CSS_SELECTOR, "#run-btn").click()

    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#status"), "Segmented"))
    img = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#overlay img")))
    wait.until(lambda d: d.execute_script(
        "const i = arguments[0]; return i.complete && i.naturalWidth > 0;", img))
    assert img.get_attribute("src")
    natural = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                    img)
    h, w = phantom_case[0].shape[1:]
    k = natural[1] // h
    # With a ground truth: ground truth | prediction | errors, each the upload enlarged by a
    # whole factor, 4 px apart.
    assert k >= 1 and natural == [3 * k * w + 2 * 4, k * h]

    rows = driver.find_elements(By.CSS_SELECTOR, "#legend tr.legend-row")
    listed = [r.get_attribute("data-class") for r in rows]
    assert listed == list(SYNAPSE_CLASSES[1:])
    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#legend th")]
    assert "Dice" in headers and any(t.startswith("HD95") for t in headers)
    assert "Error" not in driver.find_element(By.CSS_SELECTOR, "#status").text
    dl = driver.find_element(By.CSS_SELECTOR, "#download")
    assert dl.is_displayed()

    # The overlay in view, then the picture of the whole page.
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    if os.environ.get("UNETZOO_UPDATE_SCREENSHOT") == "1":
        target = DOCS_SCREENSHOT
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        target = tmp_path / "demo.png"
    assert driver.save_screenshot(str(target))
    assert target.stat().st_size > 10_000


def test_unreadable_upload_shows_message(driver, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 90)
    driver.get(server)
    fake = tmp_path / "scan.png"
    fake.write_bytes(b"%PDF-1.4 not an image at all")
    file_input = wait.until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]"))
    )
    file_input.send_keys(str(fake))
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#upload"), "scan"))
    driver.find_element(By.CSS_SELECTOR, "#run-btn").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#status"), "Error"))
    assert "not a supported file" in driver.find_element(By.CSS_SELECTOR, "#status").text
