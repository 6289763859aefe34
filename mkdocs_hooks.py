"""mkdocs hooks: publish the benchmark results that docs/benchmarks.md links to.

``docs/benchmarks.md`` links to ``../benchmarks/RESULTS.md`` and shows its plots,
files that live next to the harness that regenerates them, outside ``docs/``. The
links are right when reading the repository; for the site, these files are added
under ``benchmarks/`` and every relative link between repository files that are part
of the site is rewritten to its place there. ``--strict`` still reports any link that
points to a file not in the site.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent
EXTRA = ["benchmarks/RESULTS.md", "benchmarks/*.png"]  # repository paths, globbed
_LINK = re.compile(r"(\]\()([^)\s#]+)([^)]*\))")

_repo_to_site: dict[str, str] = {}


def _repo_path(src_uri: str) -> str:
    """A site file's path in the repository."""
    return next((repo for repo, site in _repo_to_site.items() if site == src_uri),
                f"docs/{src_uri}")


def on_files(files, config):
    _repo_to_site.clear()
    for pattern in EXTRA:
        for path in sorted(ROOT.glob(pattern)):
            repo = path.relative_to(ROOT).as_posix()
            _repo_to_site[repo] = repo  # published at the same path under the site
            files.append(File.generated(config, repo, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    here = _repo_path(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        target = match[2]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        repo = posixpath.normpath(posixpath.join(posixpath.dirname(here), target))
        if repo in _repo_to_site:
            site = _repo_to_site[repo]
        elif repo.startswith("docs/"):
            site = repo.removeprefix("docs/")
        else:
            return match[0]  # not part of the site: mkdocs reports it
        new = posixpath.relpath(site, posixpath.dirname(page.file.src_uri) or ".")
        return match[1] + new + match[3]

    return _LINK.sub(rewrite, markdown)
