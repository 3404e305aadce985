"""The documentation site builds with ``mkdocs build --strict``, as CI builds it: any warning fails.

A broken link between pages, a page missing from the nav, a docstring mkdocstrings cannot read, or an
included file that moved all make the strict build fail, so this test is the site's CI.
"""

import os
import subprocess
import sys

from conftest import REPO


def test_mkdocs_strict_build_passes_and_holds_every_page(tmp_path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0, not a warning of ours
    # Not --quiet: it raises the log level above the warnings --strict counts, so a broken link would pass.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = {p.stem for p in (REPO / "docs").glob("*.md")} - {"README", "index"}
    built = {p.parent.name for p in site.glob("*/index.html")}
    assert pages <= built, f"pages not built: {pages - built}"
    assert not (site / "README" / "index.html").exists()  # docs/README.md is for the repository, not the site
    # The included preset files and the comparison picture are in the site, not just referenced.
    assert "ThroughputMonitor" in (site / "callbacks" / "index.html").read_text()
    assert (site / "img" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert 'class="mermaid"' in (site / "concepts" / "index.html").read_text()
