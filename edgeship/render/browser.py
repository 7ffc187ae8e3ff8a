"""Open a report page in headless Chromium and say whether it renders: no console errors, no page errors, no
network requests (the page must be self-contained), every section present and every plot visible; save a screenshot.

Needs Playwright (the ``dev`` extra) and a Chromium binary (Debian ``chromium``); Playwright's own browser
download is never used.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# as root, in a sandbox with no network: no sandbox, no GPU, and none of Chromium's background connections
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # anything fetched beyond the page itself
    sections: list[str] = field(default_factory=list)
    plots: int = 0
    visible_plots: int = 0
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.page_errors or self.requests) and self.plots > 0 and self.visible_plots == self.plots

    def problems(self) -> list[str]:
        out = [f"console error: {e}" for e in self.console_errors] + [f"page error: {e}" for e in self.page_errors]
        out += [f"fetched {url}" for url in self.requests]
        if self.plots == 0:
            out.append("no plots on the page")
        elif self.visible_plots != self.plots:
            out.append(f"{self.plots - self.visible_plots} of {self.plots} plots are not visible")
        return out


def chromium() -> str | None:
    """The Chromium binary to use, or ``None`` when none is installed."""
    for candidate in (*CHROMIUM_CANDIDATES, shutil.which("chromium") or ""):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def check_page(html: Path, screenshot: Path, *, executable: str | None = None) -> PageCheck:
    """Load ``html`` (a file) in headless Chromium and check it; raises ``RuntimeError`` without Playwright or Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("playwright is not installed: pip install 'edgeship[dev]'") from None
    executable = executable or chromium()
    if executable is None:
        raise RuntimeError("no Chromium found: apt-get install chromium")
    result = PageCheck()
    url = html.resolve().as_uri()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.page_errors.append(str(e)))
            page.on("request", lambda r: result.requests.append(r.url) if r.url != url else None)
            page.goto(url, wait_until="load")
            result.sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            figures = page.locator("figure svg")
            result.plots = figures.count()
            for i in range(result.plots):
                box = figures.nth(i).bounding_box()
                if figures.nth(i).is_visible() and box and box["width"] > 100 and box["height"] > 100:
                    result.visible_plots += 1
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            result.screenshot = screenshot
        finally:
            browser.close()
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeship.render.browser RUN_DIR``: check its report.html, save report.png beside it."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgeship.render.browser RUN_DIR", file=sys.stderr)
        return 2
    folder = Path(args[0])
    html = folder / "report.html" if folder.is_dir() else folder
    if not html.is_file():
        print(f"{html}: no report.html here", file=sys.stderr)
        return 2
    try:
        result = check_page(html, html.with_name("report.png"))
    except RuntimeError as exc:
        print(f"report-check: {exc}", file=sys.stderr)
        return 2
    print(f"{html}: sections {', '.join(result.sections)}; {result.visible_plots}/{result.plots} plots visible; "
          f"screenshot {result.screenshot}")
    for problem in result.problems():
        print(f"  {problem}", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
