"""`peftlab findings DIR`: the published findings (docs/findings.md and docs/findings.html, plots in
docs/findings_plots/) from a survey folder: its cross-domain report, introduced by how it was produced."""

from __future__ import annotations

from pathlib import Path

from peftlab.io.atomic import write_text_atomic
from peftlab.study.document import Paragraph, to_html, to_markdown
from peftlab.study.survey_report import build_blocks


def write_findings(survey: Path, to: Path) -> tuple[Path, Path]:
    """Write `to` (Markdown, plots referenced next to it) and its self-contained HTML twin; return both paths."""
    to.parent.mkdir(parents=True, exist_ok=True)
    intro = [Paragraph(
        f"Measured by peftlab on the machine named below, from the survey folder `{survey.name}`; regenerate this "
        f"page with `peftlab findings {survey} --to {to}`. Every number below comes from that run's results "
        "files; nothing is typed in by hand. The command, its date, the source commit, the hardware and the total "
        "time follow.")]
    blocks, title = build_blocks(survey, to.parent / f"{to.stem}_plots", intro, "Findings: the survey, measured")
    page = to.with_suffix(".html")
    write_text_atomic(to, to_markdown(blocks, to.parent))
    write_text_atomic(page, to_html(blocks, title))
    return to, page
