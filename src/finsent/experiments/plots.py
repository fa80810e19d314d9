"""dvc.yaml's plots drawn offline: one self-contained HTML page (`finsent-plots`), or PNG images.

DVC fills each plot's template with the data of each revision (`dvc plots show --json`, or
`dvc plots diff REV... --json`); vl-convert compiles and draws the Vega-Lite in-process. The page
`dvc plots show` writes loads vega from a CDN and stays blank without internet; this one holds the
plots as SVG, with no script and nothing fetched.
"""

import argparse
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from finsent import dvc_access
from finsent.atomic import atomic_file
from finsent.cli import run_cli
from finsent.errors import FinsentError

DEFAULT_PAGE = Path("dvc_plots/offline.html")
"""Beside `dvc plots show`'s own page, in the folder the project's .gitignore keeps out of git."""

# Inside a tag: an href or src attribute, or a CSS url(), pointing anywhere but within the SVG (#id)
# or at inline data. (Text content cannot hold a tag: Vega writes `<` in text as `&lt;`.)
_OUTSIDE_REFERENCE = re.compile(
    r"""<[^>]*?(?:\s(?:xlink:)?(?:href|src)\s*=\s*["'](?!#|data:)|url\(\s*["']?(?!#|data:))([^"'\s>)]*)"""
)

# The browser's own guard as well: nothing outside the page may load, whatever it holds.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
img-src data:">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
section {{ margin-bottom: 3em; }}
svg {{ max-width: 100%; height: auto; }}
.missing {{ color: #a33; }}
</style>
</head>
<body>
<h1>{title}</h1>
{sections}
</body>
</html>
"""


@dataclass
class Plot:
    """One plot of dvc.yaml: its Vega-Lite spec holding every revision's data, and what it lacks."""

    title: str
    spec: dict | None  # None: no revision has its data
    revisions: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (data file, revision)


def dvc_plots(revisions: list[str]) -> list[Plot]:
    """dvc.yaml's plots: the workspace's with no `revisions`, else those of `dvc plots diff REVISIONS`.

    The revisions are drawn in the order given, then the workspace (DVC puts it first): a base
    revision is the left panel and the first colour. A data file missing at a revision (a plot added
    after it, a stage not yet run) is noted on the plot, which shows the revisions that have it; any
    other error stops.
    """
    output = dvc_access.plots(revisions)
    missing: dict[str, list[tuple[str, str]]] = {}
    for error in output.get("errors", []):
        if error.get("type") == "FileNotFoundError" and "source" in error:
            missing.setdefault(error["name"], []).append((error["source"], error["rev"]))
            continue
        where = ", ".join(str(error[key]) for key in ("name", "rev", "source") if key in error)
        raise FinsentError(f"plot {where}: {error.get('msg') or error.get('type', 'unreadable')}")
    order = [*revisions, "workspace"]
    plots = []
    for title, renderers in output.get("data", {}).items():
        drawn = [renderer for renderer in renderers if renderer["type"] == "vega"]
        spec, shown = (drawn[0]["content"], drawn[0]["revisions"]) if drawn else (None, [])
        if spec is not None:
            _put_in_order(spec, order)
        plots.append(Plot(title, spec, sorted(shown, key=_by_place_in(order)), missing.get(title, [])))
    if not any(plot.spec for plot in plots):
        raise FinsentError("dvc.yaml: no plot has data to draw")
    return plots


def _by_place_in(order: list[str]):
    """Sort key of a revision name: its place in `order`, any other name last."""
    return lambda revision: order.index(revision) if revision in order else len(order)


def _put_in_order(spec: dict, order: list[str]) -> None:
    """Sort the spec's data rows, and the colour domain DVC writes into its own templates, by revision.

    Panels (the confusion matrices' facets, `sort: []`) and legends (`sort: null`) follow the data.
    """
    place = _by_place_in(order)
    spec.get("data", {}).get("values", []).sort(key=lambda row: place(row.get("rev")))
    colour = spec.get("encoding", {}).get("color", {}).get("scale", {})
    if "domain" in colour:
        colour["domain"] = sorted(colour["domain"], key=place)


def _convert(plot: Plot, convert, **options):
    try:
        # The data is inline: allowing no base URL means nothing is fetched, whatever the spec says.
        return convert(plot.spec, allowed_base_urls=[], **options)
    except ValueError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else lines[0]  # line 0 only says the conversion failed
        raise FinsentError(f"plot {plot.title}: Vega-Lite could not draw it ({reason})") from None


def draw_svg(plot: Plot) -> str:
    """The plot as SVG; refused if it would load anything from outside itself (an image mark's URL)."""
    import vl_convert

    svg = _convert(plot, vl_convert.vegalite_to_svg)
    if outside := _OUTSIDE_REFERENCE.search(svg):
        raise FinsentError(f"plot {plot.title}: refers to {outside.group(1)}, outside the page")
    return svg


def draw_png(plot: Plot) -> bytes:
    import vl_convert

    return _convert(plot, vl_convert.vegalite_to_png, scale=2)


def plots_page(plots: list[Plot]) -> str:
    """One HTML page holding every plot as inline SVG: no script, no link, nothing to fetch."""
    revisions = list(dict.fromkeys(revision for plot in plots for revision in plot.revisions))
    sections = []
    for plot in plots:
        parts = [f"<h2>{html.escape(plot.title)}</h2>"]
        if plot.missing:
            lacking = ", ".join(f"{source} at {revision}" for source, revision in plot.missing)
            parts.append(f'<p class="missing">No data: {html.escape(lacking)}.</p>')
        if plot.spec is not None:
            parts.append(draw_svg(plot))
        sections.append("<section>\n" + "\n".join(parts) + "\n</section>")
    title = html.escape(f"Plots of dvc.yaml: {', '.join(revisions)}")
    return _PAGE.format(title=title, sections="\n".join(sections))


def write_plots_page(out: Path, revisions: list[str]) -> Path:
    """Write the page of `revisions`' plots (the workspace's with none) to `out`; return it."""
    page = plots_page(dvc_plots(revisions))
    with atomic_file(out) as staging:
        staging.write_text(page, encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "revisions",
        nargs="*",
        help="revisions as `dvc plots diff` takes them: one is drawn beside the workspace,\n"
        "several alone (default: the workspace alone, as `dvc plots show`)",
    )
    parser.add_argument(
        "-o", "--out", type=Path, default=DEFAULT_PAGE, help=f"page to write ({DEFAULT_PAGE})"
    )
    args = parser.parse_args()
    print(write_plots_page(args.out, args.revisions).resolve().as_uri())


def cli() -> None:
    """The `finsent-plots` command: main() with expected errors as one line."""
    run_cli(main)


if __name__ == "__main__":
    cli()
