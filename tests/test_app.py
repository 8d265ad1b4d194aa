"""The Gradio app: API (gradio_client), errors as messages, start-up without weights, and a real
browser session (Playwright + the system Chromium).

Everything runs on 127.0.0.1 in random-weights mode with renders capped at 256 px
(``build_demo(max_resolution=256)``, the same as ``CSLA_APP_MAX_RESOLUTION=256``), two samples per
edit, so the file stays within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "assets" / "astronaut.jpg"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SAMPLES = 2
TEST_RESOLUTION = 256
REFINE_SECONDS = 3.0

if str(REPO) not in sys.path:  # app.py lives at the repository root
    sys.path.insert(0, str(REPO))

from app_helpers import launch_on_loopback as launch  # noqa: E402

import app  # noqa: E402
from csla_app import gradio_fixes  # noqa: E402
from csla_app.launch import app_environment, free_port  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    import csla_core

    return csla_core.load_pipeline(random_weights=True, device="cpu")


@pytest.fixture(scope="module")
def demo(pipe):
    # A short refinement: what is tested is the flow around it (tests/test_likeness.py tunes).
    return app.build_demo(pipe, max_resolution=TEST_RESOLUTION, refine_seconds=REFINE_SECONDS)


@pytest.fixture(scope="module")
def server(demo):
    url = launch(demo)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def edit(client, image, prompt="smiling", strength=1.0, seed=0, samples=SAMPLES):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(image)), prompt, strength, seed, samples, api_name="/edit"
    )


def error_message(excinfo) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------ API


def test_every_event_has_an_api_name(demo):
    deps = demo.config["dependencies"]
    assert deps and all(d.get("api_name") for d in deps), [d.get("api_name") for d in deps]
    names = {d["api_name"] for d in deps}
    assert {"edit", "invert", "edit_photo", "sweep", "generate"} <= names


def test_edit_endpoint_signature(client):
    """The first five parameters as they always were; the new ones are optional."""
    info = client.view_api(print_info=False, return_format="dict")
    params = info["named_endpoints"]["/edit"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names == ["photo", "prompt", "strength", "seed", "samples", "detail", "refine"]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in params[5:]}
    assert defaults == {"detail": "keep", "refine": False}
    assert all(p.get("parameter_has_default") for p in params[5:])


def test_the_edit_settings_are_the_api_parameters(client):
    """The settings are passed by name (EditSettings): the names and order stay the API's."""
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = {name: [p["parameter_name"] for p in e["parameters"]] for name, e in info.items()}
    face, look = ["photo", "face_index", "prompt", "source_prompt"], ["diversity", "seed"]
    show = ["paste_mode", "detail"]
    assert params["/edit_photo"] == [*face, "strength", "auto", "samples", *look, *show]
    assert params["/sweep"] == [*face, "max_strength", "frames", *look, *show]
    assert params["/refine"] == ["photo", "face_index"]
    assert params["/invert"] == ["photo"] and params["/select_face"] == ["photo", "face_index"]
    assert params["/generate"] == ["prompt", "samples", "seed"]


def test_results_are_output_only(demo):
    """The results gallery feeds the comparison but is no upload zone (issue 14)."""
    gallery = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "results")
    assert gallery.interactive is False


def test_importing_the_app_changes_nothing_in_gradio(demo):
    """gradio's fixes are installed when a demo is built, not when app.py is imported."""
    from gradio import processing_utils

    code = (
        "import gradio, gradio.processing_utils as p\n"
        "seen = lambda: {n: id(v) for n, v in vars(p).items()} | {n: id(v) for n, v in "
        "vars(gradio.Image).items()} | {n: id(v) for n, v in vars(gradio.Blocks).items()}\n"
        "before = seen()\n"
        "import app\n"
        "assert seen() == before, sorted(set(seen().items()) ^ set(before.items()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert processing_utils.save_pil_to_cache is gradio_fixes.save_pil_to_cache_atomically


def test_edit_returns_the_requested_number_of_full_size_photos(client):
    result = edit(client, ASTRONAUT, samples=SAMPLES)
    assert len(result) == SAMPLES
    original = Image.open(ASTRONAUT).size
    for item in result:
        with Image.open(item["image"]) as image:
            assert image.size == original  # pasted back into the photo at its own resolution
        assert "strength +1.00" in item["caption"]


def test_empty_prompt_is_a_readable_error_and_the_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as excinfo:
        edit(client, ASTRONAUT, prompt="   ")
    assert "prompt is empty" in error_message(excinfo)
    assert len(edit(client, ASTRONAUT, prompt="grey hair", strength=-0.5, samples=1)) == 1


def test_non_image_upload_is_a_readable_error_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client.exceptions import AppError

    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture\n" * 20)
    with pytest.raises(AppError) as excinfo:
        edit(client, fake)
    message = error_message(excinfo)
    assert "not an image" in message and "Traceback" not in message
    assert len(edit(client, ASTRONAUT, samples=1)) == 1


def test_huge_images_are_readable_errors(client, tmp_path):
    from gradio_client.exceptions import AppError

    for size, expected in [((15_000, 10_000), "too large"), ((20_100, 10_000), "too large")]:
        path = tmp_path / f"huge-{size[0]}.png"  # tiny files, huge pixel counts
        Image.new("L", size, 128).save(path, optimize=False, compress_level=1)
        with pytest.raises(AppError) as excinfo:
            edit(client, path)
        assert expected in error_message(excinfo)


def test_photo_without_a_face_is_a_readable_error(client, tmp_path):
    from gradio_client.exceptions import AppError

    blank = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (180, 170, 160)).save(blank)
    with pytest.raises(AppError) as excinfo:
        edit(client, blank)
    assert "No face found" in error_message(excinfo)


def test_invert_endpoint_gives_crop_and_reconstruction(client):
    from gradio_client import handle_file

    outputs = client.predict(handle_file(str(ASTRONAUT)), api_name="/invert")
    _radio, _faces, crop, reconstruction, likeness = outputs
    with Image.open(crop) as image:
        assert image.size == (1024, 1024)
    with Image.open(reconstruction) as image:
        assert image.size == (TEST_RESOLUTION, TEST_RESOLUTION)
    assert likeness.startswith("Reconstruction L2 ") and "(not refined)" in likeness


def _grey_levels_apart(a, b) -> int:
    with Image.open(a) as first, Image.open(b) as second:
        assert first.size == second.size
        x = np.asarray(first.convert("RGB"), np.int16)
        return int(np.abs(x - np.asarray(second.convert("RGB"), np.int16)).max())


def test_strength_zero_gives_the_photo_back_and_none_does_not(client):
    (first, *_rest) = [item["image"] for item in edit(client, ASTRONAUT, strength=0.0)]
    assert _grey_levels_apart(first, ASTRONAUT) <= 1
    from gradio_client import handle_file

    (none, *_) = client.predict(
        handle_file(str(ASTRONAUT)), "smiling", 0.0, 0, 1, "none", api_name="/edit"
    )
    assert _grey_levels_apart(none["image"], ASTRONAUT) > 1
    with pytest.raises(Exception, match="not in the list of choices"):  # gradio checks it
        client.predict(handle_file(str(ASTRONAUT)), "smiling", 0.0, 0, 1, "blur", api_name="/edit")


def test_strength_zero_crop_view_is_the_aligned_crop(client):
    from gradio_client import handle_file

    crop = client.predict(handle_file(str(ASTRONAUT)), api_name="/invert")[2]
    results = client.predict(
        photo=handle_file(str(ASTRONAUT)),
        prompt="smiling",
        strength=0.0,
        samples=1,
        paste_mode="crop",
        api_name="/edit_photo",
    )
    with Image.open(crop) as image:
        expected = image.convert("RGB").resize((TEST_RESOLUTION,) * 2, Image.Resampling.BILINEAR)
    (item,) = results[0]
    with Image.open(item["image"]) as got:
        assert np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_refine_then_edit_through_the_api(client):
    """/refine shows its progress and the refined reconstruction; /edit's refine parameter
    refines within the call; edits of the refined face differ from the untuned ones."""
    from gradio_client import Client, handle_file

    job = client.submit(handle_file(str(ASTRONAUT)), 0, api_name="/refine")
    outputs = job.result(timeout=300)
    reconstruction, likeness = outputs
    assert "(refined:" in likeness and "steps in" in likeness
    with Image.open(reconstruction) as image:
        assert image.size == (TEST_RESOLUTION, TEST_RESOLUTION)
    statuses = [update[1] for update in job.outputs()]
    assert any(str(s).startswith("Refining likeness") for s in statuses), statuses
    # /edit with refine: a new session refines first, and its strength-0 result is still the photo.
    fresh = Client(client.src, verbose=False)
    refined = fresh.predict(handle_file(str(ASTRONAUT)), "smiling", 1.0, 0, 1, "none", True,
                            api_name="/edit")  # fmt: skip
    plain = fresh.predict(handle_file(str(ASTRONAUT)), "smiling", 1.0, 0, 1, "none", False,
                          api_name="/edit")  # fmt: skip
    other = Client(client.src, verbose=False)
    untuned = other.predict(handle_file(str(ASTRONAUT)), "smiling", 1.0, 0, 1, "none",
                            api_name="/edit")  # fmt: skip
    assert _grey_levels_apart(refined[0]["image"], plain[0]["image"]) <= 1  # kept in the session
    assert _grey_levels_apart(refined[0]["image"], untuned[0]["image"]) > 1


def test_several_faces_can_be_chosen(client, tmp_path):
    from gradio_client import handle_file

    with Image.open(ASTRONAUT) as image:  # two astronauts side by side: two faces
        pair = Image.new("RGB", (image.width * 2, image.height))
        pair.paste(image, (0, 0))
        pair.paste(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (image.width, 0))
    path = tmp_path / "two.png"
    pair.save(path)
    first = client.predict(handle_file(str(path)), api_name="/invert")
    assert first[1] is not None  # the annotated photo is shown when there are several faces
    second = client.predict(handle_file(str(path)), 1, api_name="/select_face")
    assert second[0]["value"] == 1 and len(second[0]["choices"]) == 2
    with Image.open(first[2]) as a, Image.open(second[2]) as b:
        assert a.tobytes() != b.tobytes()  # another face, another crop


def test_strength_sweep_is_an_animation(client):
    from gradio_client import handle_file

    (gif,) = [
        client.predict(
            photo=handle_file(str(ASTRONAUT)),
            prompt="smiling",
            max_strength=1.0,
            frames=3,
            paste_mode="crop",
            api_name="/sweep",
        )
    ]
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 4  # -1, 0, +1, then 0 on the way back


def test_text_to_image(client):
    result = client.predict("a smiling old man", SAMPLES, 3, api_name="/generate")
    assert len(result) == SAMPLES


# ------------------------------------------------------------------------------ errors, caches


def test_out_of_memory_becomes_a_message():
    import gradio as gr
    import torch

    for exc in (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried... out of memory"),
    ):
        error = app.user_error(exc)
        assert isinstance(error, gr.Error) and "Out of memory" in error.message


def test_pipeline_errors_keep_their_message():
    from csla_core.errors import NoFaceError

    error = app.user_error(NoFaceError("No face found in the photo."))
    assert error.message == "No face found in the photo." and error.title == "No face found"


def test_missing_photo_is_a_readable_error():
    from csla_core.service import NO_PHOTO_MESSAGE, NoPhotoError

    error = app.user_error(NoPhotoError(NO_PHOTO_MESSAGE))
    assert error.message == "Upload a portrait (or pick the example) first."
    assert error.title == "No photo"


def test_sessions_do_not_share_caches(demo, client, server):
    """Each API client / browser tab has its own gr.State cache; nothing is module-level."""
    import gradio as gr
    from gradio_client import Client, handle_file

    from csla_core.service import SessionCache

    other = Client(server, verbose=False)
    for each in (client, other):
        each.predict(handle_file(str(ASTRONAUT)), api_name="/invert")
    state_id = next(i for i, b in demo.blocks.items() if isinstance(b, gr.State))
    mine = demo.state_holder[client.session_hash].state_data[state_id]
    theirs = demo.state_holder[other.session_hash].state_data[state_id]
    assert isinstance(mine, SessionCache) and isinstance(theirs, SessionCache)
    assert mine is not theirs and mine.items and theirs.items
    assert all(
        a.inversion is not b.inversion for a in mine.items.values() for b in theirs.items.values()
    )


def test_missing_weights_page_says_what_to_do():
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from csla_core.errors import WeightsError

    demo = app.build_demo(WeightsError("e4e_ffhq_encode.pt was not found in checkpoints/."))
    text = json.dumps(demo.config, default=str)
    assert "python -m csla_core download" in text and "--random-weights" in text
    url = launch(demo)
    try:
        with pytest.raises(AppError) as excinfo:
            edit(Client(url, verbose=False), ASTRONAUT)
        assert "python -m csla_core download" in error_message(excinfo)
    finally:
        demo.close()


@pytest.mark.slow
def test_python_app_py_starts_without_weights(tmp_path):
    """`python app.py` with no weights reachable: serves a page explaining what to download."""
    port = free_port()
    env = app_environment(
        port, HF_HUB_CACHE=str(tmp_path / "hub"), CSLA_CHECKPOINT_DIR=str(tmp_path / "empty")
    )
    (tmp_path / "empty").mkdir()
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--no-download"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 150
        config = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = r.read().decode()
                break
            except OSError:
                time.sleep(1)
        assert config is not None, log.read_text()
        assert "python -m csla_core download" in config and "--random-weights" in config
        assert "Traceback" not in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)


# --------------------------------------------------------------------------------- the browser


def _ensure_chromium() -> str | None:
    """Path of the system Chromium, installing the Debian package if needed; None if impossible."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def install() -> bool:
        done = subprocess.run(
            [apt, "install", "-y", "chromium"], capture_output=True, env=env, timeout=900
        )
        return done.returncode == 0

    if not install():  # stale package lists: refresh once
        subprocess.run([apt, "update"], capture_output=True, env=env, timeout=600)
        install()
    return CHROMIUM if Path(CHROMIUM).exists() else None


def _ensure_playwright():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "playwright"], capture_output=True, timeout=600
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    chromium = _ensure_chromium()
    if chromium is None:
        pytest.skip("Chromium is missing and cannot be installed here (needs root and apt-get)")
    sync_playwright = _ensure_playwright()
    if sync_playwright is None:
        pytest.skip("the playwright package cannot be installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.mark.slow
def test_browser_upload_prompt_release_slider_gives_a_gallery(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(server, wait_until="load")
        page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
        assert "RANDOM-WEIGHTS MODE" in page.locator("#csla-notice").inner_text()
        assert page.locator("#results input[type=file]").count() == 0

        page.locator("#photo input[type=file]").set_input_files(str(ASTRONAUT))
        page.locator("#prompt textarea").fill("smiling")
        samples = page.locator("#samples input[type=number]")
        samples.fill(str(SAMPLES))
        samples.blur()
        # Press and release the strength slider at 3/4 of its track: the edit runs on release.
        track = page.locator("#strength input[type=range]")
        box = track.bounding_box()
        track.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})

        page.wait_for_function(
            f"document.querySelectorAll('#results img').length >= {SAMPLES}", timeout=150_000
        )
        # The reconstruction beside the crop and the before/after comparison are shown too.
        page.wait_for_function(
            "document.querySelectorAll('#compare img').length >= 1", timeout=30_000
        )
        assert page.locator("#results img").count() == SAMPLES
        # Results are output only: no upload zone, before or after they arrive (issue 14).
        assert page.locator("#results input[type=file]").count() == 0
        assert "Drop" not in page.locator("#results").inner_text()
        strength = float(page.locator("#strength input[type=number]").input_value())
        assert 1.0 < strength <= 3.0
        # The release's final render follows the previews of the click (an input event).
        page.wait_for_function(
            "(s) => { const t = document.querySelector('#status').innerText;"
            " return t.includes(s) && !t.includes('preview'); }",
            arg=f"strength {strength:+.2f}",
            timeout=150_000,
        )
        page.wait_for_timeout(
            1500
        )  # the gallery fades new images in: let it finish for the picture
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        # Clicking a result puts it into the before/after comparison.
        after = page.locator("#compare img").last
        first_src = after.get_attribute("src")
        page.locator("#results img").nth(1).click()
        page.wait_for_function(
            "src => { const imgs = document.querySelectorAll('#compare img');"
            " return imgs.length && imgs[imgs.length - 1].getAttribute('src') !== src; }",
            arg=first_src,
            timeout=30_000,
        )
        # Dragging the slider (button held down) shows preview-size edits while it moves; the
        # full size comes on release.
        status = "document.querySelector('#status').innerText"
        track.scroll_into_view_if_needed()
        box = track.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.75, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, y, steps=8)
        number = page.locator("#strength input[type=number]")
        page.wait_for_function("n => parseFloat(n.value) < 0", arg=number.element_handle())
        dragged = float(number.input_value())
        page.wait_for_function(
            f"{status}.includes('strength {dragged:+.2f}') && {status}.includes('preview')",
            timeout=60_000,
        )
        page.mouse.up()
        page.wait_for_function(f"!{status}.includes('preview')", timeout=150_000)
        assert f"strength {dragged:+.2f}" in page.locator("#status").inner_text()

        # "Auto strength" + Edit: the strength found is shown and the slider moves to it; moving
        # the slider by hand afterwards switches "auto" off again.
        auto = page.locator("#auto-strength input[type=checkbox]")
        auto.check()
        page.locator("#edit").click()
        page.wait_for_function(f"{status}.includes('(auto)')", timeout=150_000)
        found = re.search(r"strength ([+-]\d+\.\d+) \(auto\)", page.locator("#status").inner_text())
        assert found is not None
        page.wait_for_function(
            # the slider snaps to its 0.1 step: half a step, plus float slack
            "([n, v]) => Math.abs(parseFloat(n.value) - v) < 0.051",
            arg=[number.element_handle(), float(found.group(1))],
            timeout=30_000,
        )
        track.click(position={"x": box["width"] * 0.6, "y": box["height"] / 2})
        # The release's full-size render, not just the click's preview, before the page goes
        # (a render still running when the process exits can abort it in torch).
        page.wait_for_function(
            f"!{status}.includes('(auto)') && !{status}.includes('preview')", timeout=150_000
        )
        assert not auto.is_checked()
    finally:
        page.close()


@pytest.mark.slow
def test_browser_refine_likeness_then_edit_and_compare(server, browser):
    """Upload, refine with its progress on the page (the page stays usable), then an edit of
    the refined face and its before/after comparison."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    likeness = "document.querySelector('#likeness').innerText"
    status = "document.querySelector('#status').innerText"
    try:
        page.goto(server, wait_until="load")
        page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
        page.locator("#photo input[type=file]").set_input_files(str(ASTRONAUT))
        page.wait_for_function(f"{likeness}.includes('not refined')", timeout=150_000)
        page.locator("#refine").click()
        page.wait_for_function(f"{likeness}.includes('Refining likeness')", timeout=60_000)
        page.wait_for_function(f"{likeness}.includes('(refined:')", timeout=300_000)
        assert re.search(r"\d+ steps in \d+ s", page.locator("#likeness").inner_text())
        page.locator("#prompt textarea").fill("smiling")
        page.locator("#edit").click()
        page.wait_for_function(
            f"{status}.includes('refined likeness') && !{status}.includes('preview')",
            timeout=150_000,
        )
        page.wait_for_function(
            "document.querySelectorAll('#compare img').length >= 1", timeout=30_000
        )
        assert page.locator("#results img").count() >= 1
        page.wait_for_timeout(1500)  # the gallery fades new images in
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-refined.png"), full_page=True)
    finally:
        page.close()


@pytest.mark.slow
def test_browser_first_run_edits_with_the_fallback_then_switches_to_csla(browser, monkeypatch):
    """`python app.py --random-weights --without-mappers`: no mappers, as on a real first run.
    The page shows the calibration's progress, edits meanwhile use the labelled fallback, and
    once the mappers are ready the next edit is a CSLA edit, without a restart."""
    import threading

    import csla_core
    from csla_app import model
    from csla_core.training.calibrate import CalibrationConfig

    gate = threading.Event()  # calibration starts when the test has seen the fallback

    class GatedPreparation(model.MapperPreparation):
        def _run(self):
            gate.wait(300)
            super()._run()

    monkeypatch.setattr(model, "MapperPreparation", GatedPreparation)
    pipe = csla_core.load_pipeline(random_weights=True, device="cpu", with_mappers=False)
    pipe.baseline_steps = 2  # the fallback's cost is not what this test is about
    calibration = CalibrationConfig(n_samples=16, chunk=4, min_samples=4)
    demo = app.build_demo(pipe, max_resolution=64, calibration=calibration)
    url = launch(demo)
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    status = "document.querySelector('#status').innerText"
    preparing = "document.querySelector('#csla-preparing').innerText"
    try:
        page.goto(url, wait_until="load")
        page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
        page.wait_for_function(f"{preparing}.includes('Preparing CSLA for these models')")
        page.locator("#photo input[type=file]").set_input_files(str(ASTRONAUT))
        page.locator("#prompt textarea").fill("smiling")
        page.locator("#edit").click()
        # (each edit is awaited to its full-size render: none may still run when the test ends)
        done = f"!{status}.includes('preview')"
        page.wait_for_function(
            f"{status}.includes('optimisation baseline') && {done}", timeout=150_000
        )
        gate.set()
        # The progress line moves on and ends with the mappers in use.
        page.wait_for_function(f"{preparing}.includes('ready')", timeout=300_000)
        page.locator("#edit").click()
        page.wait_for_function(f"{status}.includes('CSLA mappers') && {done}", timeout=150_000)
        assert pipe.mappers is not None
    finally:
        gate.set()
        page.close()
        demo.close()
