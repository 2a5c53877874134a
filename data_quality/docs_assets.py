"""Great Expectations' Data Docs without internet access: the stylesheets and scripts its pages
load from CDNs (Bootstrap, bootstrap-table, jQuery, Font Awesome, Vega ...) are fetched once, at
pinned versions, from the npm registry into the project's cache, copied beside the pages, and
every page's links are rewritten to those copies. Offline, the pages then open styled and
interactive; a machine that cannot reach the registry keeps the CDN links, with one warning.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path

from common.cache import publish
from common.settings import Tooling

log = logging.getLogger("lakehouse.dq")

# CDN address in GX's page templates -> (npm package, version, file in the package)
ASSETS: dict[str, tuple[str, str, str]] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": ("bootstrap", "4.3.1", "dist/css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": ("bootstrap", "4.3.1", "dist/js/bootstrap.min.js"),
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery", "3.7.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": ("popper.js", "1.12.9", "dist/umd/popper.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": ("@fortawesome/fontawesome-free", "6.6.0", "css/all.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": ("bootstrap-datepicker", "1.9.0", "dist/css/bootstrap-datepicker.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": ("bootstrap-datepicker", "1.9.0", "dist/js/bootstrap-datepicker.min.js"),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": ("@forevolve/bootstrap-dark", "1.1.0", "dist/css/bootstrap-prefers-dark.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": ("bootstrap-table", "1.19.1", "dist/bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": ("bootstrap-table", "1.19.1", "dist/bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": ("bootstrap-table", "1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": ("bootstrap-table", "1.19.0", "dist/extensions/filter-control/bootstrap-table-filter-control.css"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": ("bootstrap-table", "1.19.0", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega", "5.33.1", "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega-lite", "5.23.0", "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega-embed", "6.29.0", "build/vega-embed.min.js"),
}
# folders a stylesheet refers to relatively (Font Awesome's ../webfonts/)
EXTRA_DIRS = {("@fortawesome/fontawesome-free", "6.6.0"): ("webfonts",)}
VENDOR = "static/vendor"  # under the Data Docs site


def _package_dir(cache: Path, package: str, version: str) -> Path:
    return cache / "docs-assets" / f"{package.replace('/', '__')}@{version}"


def fetch(package: str, version: str, tooling: Tooling | None = None) -> Path:
    """The unpacked npm package (cached in ``<cache>/docs-assets``)."""
    tooling = tooling or Tooling.from_env()
    target = _package_dir(tooling.cache_dir, package, version)
    if (target / ".complete").exists():
        return target
    name = package.rsplit("/", 1)[-1]
    url = f"{tooling.npm_url.rstrip('/')}/{package}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    return publish(target, lambda folder: _unpack(data, folder, url), (target / ".complete").exists)


def _unpack(data: bytes, tmp: Path, url: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/")]
        for m in members:
            out = (tmp / m.name[len("package/"):]).resolve()
            if not out.is_relative_to(tmp.resolve()):  # a member named ../x stays out
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
    (tmp / ".complete").write_text(url)


def localize(site: Path, tooling: Tooling | None = None) -> int:
    """Copy the assets into ``site``/static/vendor and point every page of ``site`` at them.
    Returns the number of pages rewritten (0 when the assets could not be fetched)."""
    tooling = tooling or Tooling.from_env()
    vendor = site / VENDOR
    local: dict[str, Path] = {}
    try:
        for url, (package, version, path) in ASSETS.items():
            src = fetch(package, version, tooling)
            dest = vendor / f"{package.replace('/', '__')}@{version}"
            if not (dest / path).exists():
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / path, dest / path)
                for extra in EXTRA_DIRS.get((package, version), ()):
                    shutil.copytree(src / extra, dest / extra, dirs_exist_ok=True)
            local[url] = dest / path
    except (OSError, tarfile.TarError) as e:  # offline without a cache: the pages keep their CDN links
        log.warning("Data Docs keep their CDN links (could not fetch their assets from %s: %s)", tooling.npm_url, e)
        return 0
    pattern = re.compile("|".join(re.escape(u) for u in sorted(ASSETS, key=len, reverse=True)))
    pages = 0
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = pattern.sub(lambda m: os.path.relpath(local[m.group(0)], page.parent), text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            pages += 1
    return pages
