"""Headless Chromium for the report's tests and screenshot: a page in, a PNG out, and the URLs
the page asked the network for (read from Chromium's net log).

Chromium is Debian's `chromium` (scripts/setup.sh installs it for tests). Its own background
traffic (update checks, sign-in) is switched off where flags allow and, for the rest, every
host name resolves to nothing (--host-resolver-rules), so no packet leaves for a name.
"""

from __future__ import annotations

import json
import shutil
import subprocess  # noqa: TID251 - test helper: runs Chromium
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

FLAGS = (
    "--headless",
    "--no-sandbox",  # as root Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-pings",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def available() -> str | None:
    """Why Chromium cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "the report's browser tests need Chromium: apt-get install chromium (setup.sh test)"
    return None


def screenshot(
    page: Path, png: Path, *, width: int = 1280, height: int = 4000, netlog: Path | None = None
) -> Image.Image:
    """Render `page` at `width` CSS pixels into `png`, cut below the page's last content
    (the window is `height` tall); the image, as RGB."""
    with tempfile.TemporaryDirectory(prefix="porttrap-chromium-") as profile:
        argv = [
            "chromium",
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
        ]
        if netlog is not None:
            argv.append(f"--log-net-log={netlog}")
        argv.append(page.resolve().as_uri())
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    image = trimmed(Image.open(png).convert("RGB"))
    image.save(png, optimize=True)
    return image


def trimmed(image: Image.Image, margin: int = 16) -> Image.Image:
    """`image` without the rows of plain background below its content (the background is
    the colour of the bottom-left pixel)."""
    background = image.getpixel((0, image.height - 1))
    plain = Image.new("RGB", image.size, background)
    box = ImageChops.difference(image, plain).getbbox()
    if box is None:
        return image
    return image.crop((0, 0, image.width, min(image.height, box[3] + margin)))


def page_requests(netlog: Path) -> list[str]:
    """The URLs that a page loaded from a file asked the network for. Chromium's own requests
    (update checks and the like) have no file:// page as their top frame and are left out."""
    log = json.loads(netlog.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if "file://" in params.get("network_isolation_key", "") or params.get("initiator") in (
            "null",
            "file://",
        ):
            urls.append(params["url"])
    return urls
