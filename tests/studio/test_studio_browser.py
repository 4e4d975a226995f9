"""ref2img studio in a real browser: Debian's Chromium, driven by Playwright, against `ref2img serve` on
the tiny model. Screenshots of each flow are kept as test artifacts (`test-artifacts/studio/`, or
$REF2IMG_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from ..server.conftest import Server

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")

pytestmark = pytest.mark.slow  # two servers and a browser: about a minute; CI runs it

ARTIFACTS = Path(os.environ.get("REF2IMG_TEST_ARTIFACTS", "test-artifacts")) / "studio"
CHROMIUM = os.environ.get("REF2IMG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("REF2IMG_REQUIRE_SERVICES"):
            pytest.fail("no chromium on this machine (apt install chromium); CI must run the browser tests")
        pytest.skip("no chromium on this machine (apt install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        instance = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def start_server(tmp_path_factory, tiny_model, steps: int) -> tuple[Server, str]:
    server = Server(tmp_path_factory.mktemp("studio-browser") / "data", tiny_model, "--part", f"steps={steps}").start()
    server.wait_engine()
    deadline = time.monotonic() + 30
    while not (found := re.search(r"ref2img studio: (\S+)", server.log())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found, server.log()
    return server, found.group(1)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_sd15):
    server, link = start_server(tmp_path_factory, tiny_sd15, steps=8)
    yield server, link
    server.stop()


@pytest.fixture(scope="module")
def slow_studio(tmp_path_factory, tiny_sd15):
    """Long enough tasks to cancel one while it runs."""
    server, link = start_server(tmp_path_factory, tiny_sd15, steps=500)
    yield server, link
    server.stop()


@pytest.fixture
def reference(tmp_path, astronaut) -> Path:
    path = tmp_path / "astronaut.png"
    astronaut.resize((384, 384)).save(path)
    return path


def open_signed_in(browser, server: Server, **context):
    """A new browser signed in through a fresh link (each link works once)."""
    page = browser.new_context(accept_downloads=True, **context).new_page()
    page.goto(server.studio_link())
    page.wait_for_selector("#studio:not([hidden])", timeout=20_000)
    return page


def wait_until(page, expression: str, timeout: float = 30_000) -> None:
    """`page.wait_for_function`, polled from here: Playwright's own polling evaluates its predicate with
    `eval`, which the studio's Content-Security-Policy (no 'unsafe-eval') rightly refuses; a plain
    `page.evaluate` goes through the DevTools protocol, which CSP does not govern."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout / 1000:.0f} s: {expression}")
        time.sleep(0.1)


def with_reference(page, reference: Path):
    """Pick the reference through the page's file input, and wait until it shows."""
    page.set_input_files("#reference-file", str(reference))
    page.wait_for_selector("#reference-preview:not([hidden])")
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def fill_job(page, prompt: str = "an astronaut in a sunflower field") -> None:
    page.fill("#prompt", prompt)
    page.fill("#width", "512")
    page.fill("#height", "512")


def test_sign_in_through_the_printed_link(browser, studio):
    _server, link = studio
    page = browser.new_page()
    page.goto(link)
    page.wait_for_selector("#studio:not([hidden])", timeout=20_000)
    assert "token" not in page.url  # the link's token leaves the address bar at once
    assert page.inner_text("#who-key").startswith("ak_")
    shot(page, "signed-in")
    page.click("#sign-out")
    page.wait_for_selector("#sign-in:not([hidden])")
    page.reload()
    page.wait_for_selector("#sign-in:not([hidden])")  # signed out for good: the cookie is gone
    page.goto(link)  # the printed link worked once: a second visit is not signed in
    page.wait_for_selector("#sign-in:not([hidden])")
    page.close()


def test_reference_control_map_generate_progress_and_download(browser, studio, reference):
    server, _ = studio
    page = open_signed_in(browser, server)
    refused = []  # the page's own code under its Content-Security-Policy: nothing may be blocked
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    page.set_input_files("#reference-file", str(reference))
    wait_until(
        page,
        "document.querySelector('#control-map').complete && document.querySelector('#control-map').naturalWidth > 0",
        timeout=30_000,
    )
    assert page.inner_text("#control-map-caption") == "edges map"
    page.check('input[name="mode"][value="3"]')  # depth: a new map for the same reference
    wait_until(page, "document.querySelector('#control-map-caption').textContent === 'depth map'", timeout=30_000)
    fill_job(page)
    page.select_option("#batch-size", "2")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=60_000)
    assert page.eval_on_selector("#run-progress", "el => el.value") == 100
    assert page.locator("#gallery li").count() == 2
    seeds = page.locator("#gallery .tools span").all_inner_texts()
    first = int(seeds[0].split()[1])
    assert seeds == [f"seed {first}", f"seed {first + 1}"]  # each image shows its own seed
    shot(page, "generated")
    with page.expect_download() as caught:
        page.locator("#gallery a", has_text="Download").first.click()
    path = caught.value.path()
    assert Image.open(path).size == (512, 512)
    # The marks show on the run (the suite's servers leave the watermark out: tests/conftest.py), and the
    # downloaded file carries the manifest they name.
    assert page.inner_text("#run-marks") == "Marked as AI-generated: C2PA manifest."
    from ref2img.provenance.manifest import read_manifest

    assert read_manifest(Path(path).read_bytes(), "image/png").ai_generated

    page.locator("#gallery button", has_text="Use as reference").first.click()
    assert "/v1/files/results/" in page.get_attribute("#reference-preview", "src")
    assert refused == [], refused
    page.close()


def test_a_file_that_is_not_an_image_gets_an_inline_error_and_keeps_the_form(browser, studio, tmp_path):
    server, _ = studio
    page = open_signed_in(browser, server)
    page.fill("#prompt", "keep me")
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image")
    page.set_input_files("#reference-file", str(notes))
    wait_until(page, "document.querySelector('#reference-error').textContent.length > 0", timeout=15_000)
    assert page.inner_text("#reference-error").startswith("file:")
    assert page.input_value("#prompt") == "keep me"
    page.click("#generate")
    wait_until(page, "document.querySelector('#job-error').textContent.length > 0")
    assert page.inner_text("#job-error").startswith("reference_image:")  # no reference yet: said, not sent
    shot(page, "error")
    page.close()


def test_the_servers_own_range_message_shows_inline(browser, studio, reference):
    server, _ = studio
    page = with_reference(open_signed_in(browser, server), reference)
    fill_job(page)
    page.fill("#width", "4096")
    page.click("#generate")
    wait_until(page, "document.querySelector('#job-error').textContent.length > 0", timeout=15_000)
    assert "width" in page.inner_text("#job-error") and "2048" in page.inner_text("#job-error")
    assert page.input_value("#width") == "4096" and page.input_value("#prompt").startswith("an astronaut")
    page.close()


def test_cancel_a_running_task(browser, slow_studio, reference):
    server, _ = slow_studio
    page = with_reference(open_signed_in(browser, server), reference)
    page.check('input[name="mode"][value="2"]')  # subject: its mask is quick to make
    fill_job(page)
    page.select_option("#batch-size", "4")  # 500 steps of 4 images: long enough to cancel halfway
    page.click("#generate")
    wait_until(page, "document.querySelector('#run-status').textContent.startsWith('generating')", timeout=30_000)
    page.wait_for_selector("#run-preview:not([hidden])", timeout=30_000)  # a step preview while it runs
    shot(page, "running")
    page.click("#cancel")
    wait_until(page, "document.querySelector('#run-status').textContent.startsWith('cancelled')", timeout=30_000)
    assert page.inner_text("#job-error") == ""  # a cancel is no error
    assert page.is_hidden("#cancel") and page.is_enabled("#generate")
    entry = page.locator("#history li").first
    entry.wait_for(timeout=15_000)
    assert entry.locator(".thumb").inner_text() == "cancelled"  # a box where the image would be
    page.close()


def test_history_survives_a_reload_and_loads_settings(browser, studio, reference):
    server, _ = studio
    page = with_reference(open_signed_in(browser, server), reference)
    fill_job(page, prompt="a history worth keeping")
    page.uncheck("#seed-random")
    page.fill("#seed", "4242")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=60_000)
    page.reload()
    page.wait_for_selector("#studio:not([hidden])")
    entry = page.locator("#history li", has_text="a history worth keeping").first
    entry.wait_for(timeout=15_000)
    assert "seed 4242" in entry.inner_text()
    page.fill("#prompt", "")
    entry.get_by_role("button", name="Load settings").click()
    assert page.input_value("#prompt") == "a history worth keeping" and page.input_value("#seed") == "4242"
    shot(page, "history")
    page.close()


def test_keyboard_phone_width_and_dark_theme(browser, studio):
    server, _ = studio
    page = open_signed_in(browser, server, viewport={"width": 390, "height": 844}, color_scheme="dark")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # follows the system
    assert page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    assert page.is_hidden("#who-key")  # the key id gives its room to the page at phone width
    with page.expect_file_chooser() as chooser:
        page.locator("#drop").press("Enter")  # the drop zone opens the file picker from the keyboard
    assert chooser.value is not None
    shot(page, "phone-dark")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id || document.activeElement.name")
    assert focused  # focus moves on to the next control
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    page.close()


def painted_pixels(page) -> int:
    return page.evaluate("""(() => { const c = document.querySelector('#repaint-mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()""")


def drag(page, box, points, step=6):
    """A pointer stroke through `points` (fractions of the canvas's box)."""
    x, y = box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"]
    page.mouse.move(x, y)
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=step)
    page.mouse.up()


def test_the_mask_brush_paints_erases_clears_and_repaints_only_the_painted_area(browser, studio, astronaut, tmp_path):
    import io

    import httpx
    import numpy as np

    server, _ = studio
    image_path = tmp_path / "to-repaint.png"
    astronaut.resize((512, 512)).save(image_path)
    page = open_signed_in(browser, server)
    page.set_input_files("#repaint-file", str(image_path))
    page.wait_for_selector("#repaint-editor:not([hidden])", timeout=20_000)
    assert page.evaluate(
        "[document.querySelector('#repaint-mask').width, document.querySelector('#repaint-mask').height]"
    ) == [512, 512]
    page.locator("#repaint-mask").scroll_into_view_if_needed()  # the mouse reaches only what is in view
    box = page.locator("#repaint-mask").bounding_box()

    drag(page, box, [(0.3, 0.3), (0.6, 0.3), (0.6, 0.5)])  # paint
    painted = painted_pixels(page)
    assert painted > 0
    page.check('input[name="brush-mode"][value="erase"]')
    drag(page, box, [(0.3, 0.3), (0.6, 0.3)])
    assert 0 < painted_pixels(page) < painted  # erasing took part of it away
    page.click("#mask-clear")
    assert painted_pixels(page) == 0
    page.check('input[name="brush-mode"][value="paint"]')
    page.fill("#brush-size", "64")
    page.dispatch_event("#brush-size", "input")
    assert page.inner_text("#brush-size-value") == "64"
    drag(page, box, [(0.4, 0.4), (0.6, 0.6)])  # a stroke across the middle only
    page.fill("#repaint-prompt", "a golden visor")
    shot(page, "repaint-mask")
    page.click("#repaint-go")
    page.wait_for_selector("#repaint-result:not([hidden])", timeout=60_000)
    shot(page, "repaint-done")
    out = np.asarray(
        Image.open(io.BytesIO(httpx.get(page.get_attribute("#repaint-result", "src")).content)).convert("RGB")
    )
    before = np.asarray(astronaut.resize((512, 512)))
    assert out.shape == (512, 512, 3)
    corners = (slice(0, 100), slice(0, 100)), (slice(412, 512), slice(412, 512))
    assert all((out[c] == before[c]).all() for c in corners)  # unpainted: the image's own pixels
    middle = (slice(240, 272), slice(240, 272))
    assert np.abs(out[middle].astype(int) - before[middle]).mean() > 10  # painted: redrawn
    page.close()


def test_subject_mode_shows_the_subjects_mask(browser, studio, reference):
    server, _ = studio
    page = with_reference(open_signed_in(browser, server), reference)
    page.check('input[name="mode"][value="2"]')
    wait_until(page, "document.querySelector('#control-map-caption').textContent.endsWith('mask')", timeout=30_000)
    assert page.get_attribute("#control-map", "src")
    page.close()


def row_captions(page) -> list[str]:
    return page.locator("#controls li figcaption").all_inner_texts()


def test_the_controls_editor_adds_reorders_and_removes_controls_each_with_its_own_map(
    browser, studio, reference, tmp_path, astronaut
):
    server, _ = studio
    pose_image = tmp_path / "pose-source.png"
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((320, 320)).save(pose_image)
    page = with_reference(open_signed_in(browser, server), reference)  # mode: edges, the first control

    page.click("#control-add")  # the first free type after edges: pose
    page.click("#control-add")  # then depth; 3 controls in all, so no fourth
    assert page.locator("#controls li").count() == 2
    assert page.is_disabled("#control-add")
    assert page.locator("#controls .control-type").evaluate_all("els => els.map(e => e.value)") == ["1", "3"]
    wait_until(
        page,
        "[...document.querySelectorAll('#controls .control-row-map')].every(m => m.complete && m.naturalWidth > 0)",
        timeout=30_000,
    )
    assert row_captions(page) == ["pose map (reference)", "depth map (reference)"]

    first = page.locator("#controls li").nth(0)  # the pose control gets its own image
    first.locator(".control-file").set_input_files(str(pose_image))
    wait_until(page, "document.querySelector('#controls li figcaption').textContent === 'pose map'", timeout=30_000)
    first.locator(".control-intensity").fill("0.8")
    first.locator(".control-intensity").dispatch_event("input")

    page.locator("#controls li").nth(1).locator(".control-up").click()  # depth before pose
    assert page.locator("#controls .control-type").evaluate_all("els => els.map(e => e.value)") == ["3", "1"]
    assert row_captions(page)[1] == "pose map"  # the moved row kept its map
    page.locator("#controls li").nth(0).locator(".control-remove").click()
    assert page.locator("#controls li").count() == 1 and page.is_enabled("#control-add")
    shot(page, "controls")

    fill_job(page, prompt="two controls at once")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=60_000)
    tasks = page.evaluate("fetch('/v1/tasks?page_size=50').then(r => r.json())")["data"]["tasks"]  # as the studio's key
    settings = next(task for task in tasks if task["settings"]["prompt"] == "two controls at once")["settings"]
    assert settings["control_type"] == "0"
    assert [control["type"] for control in settings["controls"]] == ["edge", "pose"]
    assert settings["controls"][0].get("image") is None  # edges from the reference
    assert "/v1/files/" in settings["controls"][1]["image"] and settings["controls"][1]["intensity"] == 0.8

    entry = page.locator("#history li", has_text="two controls at once").first
    entry.wait_for(timeout=15_000)
    assert "edges + pose" in entry.inner_text()
    page.locator("#controls li").nth(0).locator(".control-remove").click()
    entry.get_by_role("button", name="Load settings").click()  # the controls come back with the settings
    assert page.locator("#controls .control-type").evaluate_all("els => els.map(e => e.value)") == ["1"]
    assert page.locator("#controls .control-intensity").input_value() == "0.8"

    page.check('input[name="mode"][value="2"]')  # subject kept too: the rows are all the controls
    page.click("#control-add")
    page.click("#control-add")
    assert page.locator("#controls li").count() == 3 and page.is_disabled("#control-add")
    page.close()


def test_the_viewer_the_restored_run_the_preset_and_the_servers_ranges(browser, studio, reference):
    server, _ = studio
    page = with_reference(open_signed_in(browser, server), reference)
    wait_until(page, "!document.querySelector('#preset').hidden")
    assert "tiny" in page.inner_text("#preset") and "random weights" in page.inner_text("#preset")
    # The ranges come from GET /v1/info, not from the page itself.
    assert (page.get_attribute("#width", "min"), page.get_attribute("#width", "max")) == ("512", "2048")
    assert page.locator("#batch-size option").all_inner_texts() == ["1", "2", "3", "4"]
    assert "512 to 2048" in page.inner_text("#size-legend")
    fill_job(page, prompt="a run to look at")
    page.select_option("#batch-size", "2")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=60_000)
    used = int(page.locator("#gallery .tools span").first.inner_text().split()[1])
    assert page.input_value("#seed") == str(used)  # the seed the run used, though the form left it random

    page.locator("#gallery img").first.click()  # the full-size viewer
    assert page.evaluate("document.querySelector('#viewer').open")
    assert f"seed {used}" in page.inner_text("#viewer-caption") and "1 of 2" in page.inner_text("#viewer-caption")
    page.keyboard.press("ArrowRight")
    assert f"seed {used + 1}" in page.inner_text("#viewer-caption")
    assert page.get_attribute("#viewer-download", "href") == page.locator("#gallery img").nth(1).get_attribute("src")
    shot(page, "viewer")
    page.keyboard.press("Escape")
    assert not page.evaluate("document.querySelector('#viewer').open")

    page.reload()  # the latest run comes back: its settings, its reference and its images
    page.wait_for_selector("#gallery img", timeout=20_000)
    assert page.input_value("#prompt") == "a run to look at" and page.locator("#gallery img").count() == 2
    assert not page.is_hidden("#reference-preview")
    page.close()


def test_advanced_settings_reach_the_task_and_a_bad_one_is_refused_inline(browser, studio, reference):
    server, _ = studio
    page = with_reference(open_signed_in(browser, server), reference)
    wait_until(page, "!document.querySelector('#preset').hidden")
    assert not page.evaluate("document.querySelector('#advanced').open")  # folded away by default
    page.click("#advanced summary")
    assert page.is_hidden("#model-picker")  # one preset on this server: nothing to pick
    assert (page.get_attribute("#steps", "min"), page.get_attribute("#steps", "max")) == ("1", "200")
    fill_job(page, prompt="with my own steps")
    page.fill("#steps", "500")
    page.click("#generate")
    wait_until(page, "document.querySelector('#job-error').textContent.length > 0", timeout=15_000)
    assert page.inner_text("#job-error").startswith("steps: must be an integer from 1 to 200")
    page.fill("#steps", "3")
    page.fill("#guidance", "2.5")
    page.fill("#negative-prompt", "blurry")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=60_000)
    tasks = page.evaluate("fetch('/v1/tasks?page_size=50').then(r => r.json())")["data"]["tasks"]
    settings = next(task for task in tasks if task["settings"]["prompt"] == "with my own steps")["settings"]
    assert (settings["steps"], settings["guidance_scale"], settings["negative_prompt"]) == (3, 2.5, "blurry")
    page.close()
