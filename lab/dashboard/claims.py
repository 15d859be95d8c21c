"""The dashboard's claims section: for each scaling study with claims, what `lab study report`
says (lab.report.study): each claim, its verdict, and its comparisons with their intervals."""

from __future__ import annotations

import html

from lab.dashboard.data import DashboardData
from lab.report.study import build_report

VERDICT_COLOURS = {"supported": "#1b7f3b", "partly supported": "#5f9e3a", "contradicted": "#b3261e",
                   "partly contradicted": "#c0612b", "mixed": "#8a6d00", "inconclusive": "#666"}
CLAIM_BOOTSTRAP = 400    # bootstrap samples of the exponents behind `steeper` claims on a page


def claims_html(data: DashboardData, n_boot: int = CLAIM_BOOTSTRAP) -> str | None:
    """The claims of the page's scaling studies as HTML tables; None when no study has claims."""
    parts = []
    for study in data.studies:
        if study.config.get("kind") != "scaling" or not study.config.get("claims"):
            continue
        report = build_report(study.folder, n_boot=n_boot)
        rows = []
        for r in report.claims:
            details = "<br>".join(
                f"{html.escape(c.arm)} vs {html.escape(c.than)}: {html.escape(c.statistic)} = "
                f"{c.measured(r.claim.test)} → {c.verdict}" + (f" <i>({html.escape(c.note)})</i>" if c.note else "")
                for c in r.comparisons)
            colour = VERDICT_COLOURS.get(r.verdict, "#666")
            rows.append(f"<tr><td class='t'>{html.escape(r.claim.says)}</td>"
                        f"<td><b style='color:{colour}'>{html.escape(r.verdict)}</b></td>"
                        f"<td>{html.escape(r.claim.test)}</td><td class='t'>{details}</td></tr>")
        spread = report.macs_spread
        head = (f"<h3>{html.escape(report.name)}</h3><p class='help'>{report.metric}, {report.level:.0%} intervals"
                + (f"; the arms' MACs span {spread:.2f}x" if spread else "") + "</p>")
        parts.append(head + "<table class='claims'><thead><tr><th>claim</th><th>verdict</th><th>test</th>"
                     "<th>comparisons (A vs B)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return "".join(parts) or None
