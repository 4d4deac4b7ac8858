"""The README and docs/ as a newcomer reads them: short, Colab first, links that resolve, and every
measured figure quoted from benchmarks/RESULTS.md, where the script that measured it wrote it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^([ \t]*)(```|~~~).*?^\1\2[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")
# a number with a unit of time, rate, size or ratio ("4.3 min", "2.6x", "9-12 minutes", "45 ms")
_WITH_UNIT = re.compile(r"(?<![\w.\-/])(\d+(?:\.\d+)?)(?:\s*(?:-|–|to)\s*(\d+(?:\.\d+)?))?\s*"
                        r"(ms|s|min|minutes|seconds|hours|GFLOP/s|images/s|MB|MiB|GB|GiB|%|x)(?![\w/])")
# a fraction written to two or more decimals: an AP, an IoU, a score
_FRACTION = re.compile(r"(?<![\w.])(0\.\d{2,4})(?!\w|\.\d)")


def prose(text: str) -> str:
    """``text`` without its code: fenced blocks (indented ones too), inline code and link targets."""
    text = _FENCE.sub("", text)
    text = _INLINE_CODE.sub("", text)
    return _LINK_TARGET.sub("]", text)


def figures(text: str) -> list[str]:
    """The measured figures a page's prose quotes, as written ("4.3", "0.901", ...)."""
    text = prose(text)
    found = [n for match in _WITH_UNIT.finditer(text) for n in match.groups()[:2] if n]
    return found + _FRACTION.findall(text)


def held_by_results(figure: str, results: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d|\.\d)", results) is not None


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_figures_are_found_in_prose_and_not_in_code():
    text = ("Training took 4.3 min (9-12 minutes on a slower CPU), 2.6x eager, mask AP50 0.901.\n"
            "Flags: `--max-upload-mb 20`, `--threshold 0.5`; Python 3.10; a 3x3 convolution at 800x1067.\n"
            "```bash\nmake demo   # 7.1 min\n```\n"
            "- a list item with a block:\n\n  ```json\n  {\"score\": 0.987}\n  ```\n")
    assert figures(text) == ["4.3", "9", "12", "2.6", "0.901"]
    results = "| demo | 4.3 | 0.901 |\n| 9 | 12.4 | 2.6 |"
    assert [f for f in figures(text) if not held_by_results(f, results)] == ["12"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_figure_a_page_quotes_is_in_results(page):
    results = RESULTS.read_text()
    missing = sorted({f for f in figures(page.read_text()) if not held_by_results(f, results)})
    assert not missing, (f"{page.relative_to(ROOT)} quotes figures that benchmarks/RESULTS.md does not hold: "
                         f"{missing}; quote them from there (re-run the benchmark that writes them) or drop them")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_a_page_resolves(page):
    broken = []
    for target in _LINK_TARGET.findall(_FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_readme_fits_a_screen_or_so_and_starts_with_colab():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    sections = re.findall(r"^## (.+)$", _FENCE.sub("", readme), re.M)
    assert sections[0] == "In Colab", sections
    assert "make demo" in readme and "make test" in readme
    assert (ROOT / "docs" / "web_page.png").is_file() and "docs/web_page.png" in readme


def test_every_docs_page_is_reachable_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme] == []


def test_the_screenshot_script_draws_the_page_with_the_masks(tiny_model_dir, tiny_coco, tmp_path):
    """docs/screenshot.py, as the README's picture is made: the real server, Chromium, one upload."""
    import importlib.util
    import json

    from PIL import Image

    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "docs" / "screenshot.py")
    screenshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshot)
    coco = json.loads(Path(tiny_coco["val"]).read_text())
    image = Path(tiny_coco["val"]).parent / coco["images"][0]["file_name"]
    out = tmp_path / "page.png"
    screenshot.main(["--model-dir", str(tiny_model_dir), "--image", str(image), "--out", str(out), "--width", "900"])
    with Image.open(out) as page:
        assert page.format == "PNG" and page.mode == "P"  # 256 colours
        assert page.width == 900 and page.height > 600
        colours = page.convert("RGB").getcolors(maxcolors=256)
    assert colours is not None and len(colours) > 20  # a drawn page, not a blank one
