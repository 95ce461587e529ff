"""The test-mode report: one 7-tile strip per test image and an ``index.html`` that shows them all.

Like the official release's ``--phase test``, every test image gets its own column strip (real, identity heat
map, identity, translation heat map, translation, cycle heat map, cycle), so a bad case can be found and shared
by its file name. The page only uses relative links, so the folder can be moved, zipped or served as it is.
"""

from __future__ import annotations

import html
import os
import posixpath
import urllib.parse

import numpy as np

from ugatit_jax.evaluation.visualize import save_png, strip

ROW_NAMES = (
    "input",
    "identity heat map",
    "identity",
    "translation heat map",
    "translation",
    "cycle heat map",
    "cycle",
)


def safe_relpath(key: str) -> str:
    """A dataset key as a relative POSIX path that stays inside the output folder (no '..', no root)."""
    parts = [p for p in str(key).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def column_strips(outputs: dict, n: int) -> list[np.ndarray]:
    """The first ``n`` images of a ``make_cycle_fn`` batch as separate uint8 (7H, W, 3) strips.

    ``visualize.strip`` lays images out as columns and normalises every heat map on its own, so slicing the
    batch strip gives exactly the strip of each image alone, with one colouring call per batch.
    """
    image = strip(outputs)
    width = np.asarray(outputs["real"]).shape[2]
    return [image[:, i * width : (i + 1) * width] for i in range(n)]


def save_strips(strips: list[np.ndarray], keys: list[str], output_dir: str, direction: str) -> list[str]:
    """Write ``<direction>/<key>.png`` under ``output_dir``; returns the relative POSIX paths written."""
    written = []
    for image, key in zip(strips, keys, strict=True):
        rel = posixpath.join(direction, safe_relpath(key) + ".png")
        save_png(image, os.path.join(output_dir, *rel.split("/")))
        written.append(rel)
    return written


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; text-align: center; }
figure img { display: block; min-width: 64px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.8em; max-width: 10em; overflow-wrap: anywhere; }
.note { color: #555; }
"""


def write_index(output_dir: str, title: str, sections: list[tuple[str, str, list[tuple[str, str]]]], notes=()) -> str:
    """Write ``output_dir/index.html``; ``sections`` are (anchor id, heading, [(relative image path, caption)]).

    Links are URL-quoted and captions HTML-escaped, because keys come from user file names.
    """
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Rows, top to bottom: {html.escape(", ".join(ROW_NAMES))}.</p>',
    ]
    out += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    out.append("<ul>")
    out += [f'<li><a href="#{html.escape(anchor)}">{html.escape(heading)}</a></li>' for anchor, heading, _ in sections]
    out.append("</ul>")
    for anchor, heading, images in sections:
        out.append(f'<h2 id="{html.escape(anchor)}">{html.escape(heading)}</h2>')
        out.append('<div class="grid">')
        for rel, caption in images:
            link = html.escape(urllib.parse.quote(rel, safe="/"))
            caption = html.escape(caption)
            out.append(
                f'<figure><a href="{link}"><img src="{link}" loading="lazy" alt="{caption}"></a>'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        out.append("</div>")
    out.append("</body></html>\n")
    path = os.path.join(output_dir, "index.html")
    os.makedirs(output_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    os.replace(tmp, path)
    return path
