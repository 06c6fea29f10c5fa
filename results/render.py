"""Write a report's tables and figures as Markdown, one self-contained HTML page, LaTeX and CSV.

Label, recipe and data-set names come from user files, so every string is escaped for the
format it goes into: HTML by Jinja2's autoescape, LaTeX by pandas' Styler (table cells) and
latex_text (captions), Markdown by escaping the characters that would break a table.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from jinja2 import Environment

from results.figures import Figure
from results.tables import Table


@dataclass
class Report:
    title: str
    summary: list[str]  # lines about the sweep: status, cells and folds done, what is missing
    sections: list[tuple[str, list[Table], list[Figure]]] = field(default_factory=list)


def _md_cell(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return lines


def to_markdown(report: Report, figure_dir: str | None = "figures") -> str:
    lines = [f"# {_md_cell(report.title)}", "", *[f"- {_md_cell(s)}" for s in report.summary], ""]
    for heading, tables, figures in report.sections:
        if not tables and not figures:
            continue
        lines += [f"## {heading}", ""]
        for table in tables:
            lines += [f"### {_md_cell(table.title)}", "", *markdown_table(table.display), ""]
            lines += [f"_{_md_cell(table.note)}_", ""] if table.note else []
        if figure_dir:
            lines += [f"![{_md_cell(f.title)}]({figure_dir}/{file_stem(f.key)}.png)" for f in figures]
            lines += [""] if figures else []
    return "\n".join(lines)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
# Which pandas' latex escaping leaves alone, but LaTeX's default (OT1) text fonts print as other glyphs ("<" as an
# inverted exclamation mark): a p shown as p<0.001 would read wrongly.
_LATEX_ANGLES = {"<": r"\textless{}", ">": r"\textgreater{}"}
_LATEX_ANGLES_RE = re.compile("[<>]")
_LATEX_SPECIAL.update(_LATEX_ANGLES)
_LATEX_SPECIAL_RE = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def latex_text(text: str) -> str:
    """text as LaTeX text mode prints it: & % $ # _ { } escaped with a backslash, ~ ^ \\ < > as their \\text...{}
    commands ('{}' ends the command, so a following space is kept). One pass: what it inserts is not escaped again."""
    return _LATEX_SPECIAL_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def to_latex(table: Table) -> str:
    """A booktabs tabular with every header and cell escaped by pandas (Styler.format(escape="latex")), and < and >
    after it as text commands (pandas' markup never writes them), and the caption by latex_text."""
    styler = table.display.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    caption = table.title + (f". {table.note}" if table.note else "")
    latex = styler.to_latex(hrules=True, caption=latex_text(caption), label=f"tab:{file_stem(table.key)}")
    return _LATEX_ANGLES_RE.sub(lambda m: _LATEX_ANGLES[m.group()], latex)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ report.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
figure { display: inline-block; margin: 0.5em 1em 1.5em 0; }
figcaption { font-size: 0.8em; color: #555; max-width: 600px; }
.note { font-size: 0.85em; color: #555; }
</style></head><body>
<h1>{{ report.title }}</h1>
<ul>{% for line in report.summary %}<li>{{ line }}</li>{% endfor %}</ul>
{% for heading, tables, figures in report.sections if tables or figures %}
<section><h2>{{ heading }}</h2>
{% for table in tables %}<h3>{{ table.title }}</h3>
<table><thead><tr>{% for c in table.display.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in table.display.itertuples(index=False) %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if table.note %}<p class="note">{{ table.note }}</p>{% endif %}
{% endfor %}
{% for f in figures %}<figure><img alt="{{ f.title }}" src="data:image/png;base64,{{ encode(f.png) }}">
<figcaption>{{ f.title }}{% if f.caption %}. {{ f.caption }}{% endif %}</figcaption></figure>
{% endfor %}</section>
{% endfor %}
</body></html>
"""


def to_html(report: Report) -> str:
    """One page with its figures inlined (data: URIs), so it can be mailed or archived as one file."""
    template = Environment(autoescape=True).from_string(_PAGE)
    return template.render(report=report, encode=lambda png: base64.b64encode(png).decode("ascii"))


def file_stem(key: str) -> str:
    """A table's or figure's key as a file name: recipe and backbone names come from user files, so
    anything but letters, digits, '.', '_' and '-' becomes '_' (no '/' or '..' leaves `out`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key).lstrip(".") or "_"


def write(report: Report, out: Path) -> dict[str, Path]:
    """report.md, report.html, tables/*.csv and *.tex, figures/*.png under `out`; what was written."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    written = {"markdown": out / "report.md", "html": out / "report.html"}
    written["markdown"].write_text(to_markdown(report), encoding="utf-8")
    written["html"].write_text(to_html(report), encoding="utf-8")
    for _, tables, figures in report.sections:
        for table in tables:
            table.numbers.to_csv(out / "tables" / f"{file_stem(table.key)}.csv", index=False)
            (out / "tables" / f"{file_stem(table.key)}.tex").write_text(to_latex(table), encoding="utf-8")
        for figure in figures:
            (out / "figures" / f"{file_stem(figure.key)}.png").write_bytes(figure.png)
    return written
