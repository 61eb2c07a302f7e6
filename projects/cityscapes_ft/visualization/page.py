"""Pieces of the self-contained HTML pages (run report, sweep page)."""
import base64
import html


def embed_png(path, alt):
    """An <img> holding the PNG file itself: the page stays one self-contained file."""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
