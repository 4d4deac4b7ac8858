"""Where the notebooks install the kit from: one repository and one ref, written into every notebook and the README.

A notebook opened in Colab has no checkout of the repository, so its first cell must name the
kit's source itself; the badges ("Open in Colab") and the README name it too. :data:`REPOSITORY`
and :data:`REF` are the one place to change it: ``python -m maskrcnn_finetune.kit_source
OWNER/REPO --ref REF`` writes them here and into the notebooks and the README, and a test fails
while any of them disagrees.

Until it is set, the repository is :data:`PLACEHOLDER`, which no GitHub account can own (GitHub
names have no underscores): pip can never fetch someone else's code from it, and the install
cell stops with what to do before pip runs.

Usage:
    python -m maskrcnn_finetune.kit_source OWNER/REPO [--ref REF]     # main (default), another branch, a commit
                                                                      # or a tag that you have pushed
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PLACEHOLDER = "__OWNER__/__REPO__"
REPOSITORY = "__OWNER__/__REPO__"  # "owner/name" on GitHub
REF = "main"  # pin a tag or a commit for users: what they install does not move under them

_REPO_RE = re.compile(r"(?:__OWNER__/__REPO__|[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100})")
_REF_RE = re.compile(r"[A-Za-z0-9._/-]+")


def pip_source(repository: str = REPOSITORY, ref: str = REF) -> str:
    """The ``KIT_SOURCE`` of the notebooks' install cell: ``git+https://github.com/OWNER/REPO.git@REF``."""
    return f"git+https://github.com/{repository}.git@{ref}"


def colab_url(notebook: str, repository: str = REPOSITORY, ref: str = REF) -> str:
    """The "Open in Colab" address of ``notebooks/<notebook>.ipynb``."""
    return f"https://colab.research.google.com/github/{repository}/blob/{ref}/notebooks/{notebook}.ipynb"


_KIT_LINE = re.compile(r'^(KIT_SOURCE = ")([^"]*)(")', re.M)
_CLONE_URL = re.compile(r"(?<!git\+)https://github\.com/[^/\s]+/[^/\s]+?\.git(?![@\w])")
_COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([^/\s]+/[^/\s]+)/blob/([^\s)]+?)/notebooks/"
                         r"(\w+)\.ipynb")


def rewrite(text: str, repository: str = REPOSITORY, ref: str = REF) -> str:
    """``text`` (a notebook's json or the README) with every kit source and Colab link set to ``repository@ref``."""
    kit = pip_source(repository, ref)
    text = _KIT_LINE.sub(lambda m: m.group(1) + kit + m.group(3), text)
    text = re.sub(r"`git\+https://github\.com/[^`\s]+\.git@[^`\s]+`", f"`{kit}`", text)
    text = _CLONE_URL.sub(f"https://github.com/{repository}.git", text)  # the README's `git clone` line
    return _COLAB_LINK.sub(lambda m: colab_url(m.group(3), repository, ref), text)


def notebooks(root) -> list[Path]:
    """Every notebook of the checkout ``root`` (``notebooks/*.ipynb``), by name."""
    return sorted((Path(root) / "notebooks").glob("*.ipynb"))


def files(root) -> list[Path]:
    """The files that name the kit's source: every notebook and the README."""
    return notebooks(root) + [Path(root) / "README.md"]


def set_source(root, repository: str, ref: str) -> list[Path]:
    """Writes ``repository`` and ``ref`` into this module, the notebooks and the README of the checkout ``root``.

    Returns:
        The files that changed.
    """
    if not _REPO_RE.fullmatch(repository) or not _REF_RE.fullmatch(ref):
        raise ValueError(f"'{repository}' @ '{ref}' is not OWNER/REPO and a tag, branch or commit")
    changed = []
    module = Path(__file__)
    text = module.read_text()
    new = re.sub(r'^REPOSITORY = .*$', f'REPOSITORY = "{repository}"  # "owner/name" on GitHub', text, count=1,
                 flags=re.M)
    new = re.sub(r'^REF = "[^"]*"', f'REF = "{ref}"', new, count=1, flags=re.M)
    for path, old, updated in [(module, text, new)] + [(p, p.read_text(), None) for p in files(root)]:
        if updated is None:
            updated = _rewrite_notebook(old, repository, ref) if path.suffix == ".ipynb" else rewrite(old, repository, ref)
        if updated != old:
            path.write_text(updated)
            changed.append(path)
    return changed


def _rewrite_notebook(text: str, repository: str, ref: str) -> str:
    book = json.loads(text)
    for cell in book["cells"]:
        source = "".join(cell["source"])
        cell["source"] = rewrite(source, repository, ref).splitlines(keepends=True)
    return json.dumps(book, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", help="OWNER/REPO on GitHub")
    parser.add_argument("--ref", default=REF, help="the branch, commit or pushed tag to install (default: %(default)s)")
    parser.add_argument("--root", default=Path(__file__).resolve().parents[1], type=Path,
                        help="the checkout whose notebooks and README to rewrite")
    args = parser.parse_args(argv)
    try:
        changed = set_source(args.root, args.repository, args.ref)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"updated {p}" for p in changed) or "nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
