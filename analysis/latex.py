"""`frontier.tex`: the Pareto-optimal points as a LaTeX table (booktabs), hypervolumes in the caption."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text: str) -> str:
    return "".join(ESCAPES.get(c, c) for c in str(text))


def _number(value: float, digits: int = 3) -> str:
    return "--" if not np.isfinite(value) else f"{value:.{digits}f}"


def _count(value: float) -> str:
    return "--" if not np.isfinite(value) else f"{value:,.0f}".replace(",", "{,}")


def _power_of_ten(value: float) -> str:
    exponent = math.log10(value)
    return rf"$10^{{{exponent:.0f}}}$" if exponent == round(exponent) else _count(value)


def _row(p, on_overall: bool) -> str:
    loss = _number(p["val_loss"]) + (rf" $\pm$ {_number(p['val_loss_ci'])}" if np.isfinite(p["val_loss_ci"]) else "")
    edges = _count(p["edges"])
    if np.isfinite(p["edges_low"]) and np.isfinite(p["edges_high"]) and p["n_circuit"] > 1:
        edges += f" [{_count(p['edges_low'])}, {_count(p['edges_high'])}]"
    star = r"$^\star$" if on_overall else ""
    variant = p["series"].split(" ", 1)[1] if " " in p["series"] else ""
    width = f"x{p['width']:g}" + (f" ({p['d_model']:g})" if np.isfinite(p["d_model"]) else "")
    cells = [escape(width + (f" {variant}" if variant else "")), f"{p['density']:g}{star}", f"{p['n_seeds']:d}",
             _count(p["nonzero_params"]), loss, edges, _number(p["solved_frac"], 2), escape(p["regime"])]
    return " & ".join(cells) + r" \\"


def frontier_tex(frontier: pd.DataFrame, hypervolumes: pd.DataFrame, note: str = "") -> str:
    """One block per width (its Pareto points, by loss); a star marks points on the overall frontier."""
    overall = set(frontier.loc[frontier["scope"] == "overall", "point"])
    lines = [r"% Written by `python -m analysis frontier`; needs \usepackage{booktabs}.",
             r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{llrrllrl}", r"\toprule",
             r"Width ($d_\mathrm{model}$) & Density & Seeds & Nonzero params & Loss (nats/byte) & Edges [95\% CI] & Solved & Regime \\",
             r"\midrule"]
    per_width = frontier[frontier["scope"] != "overall"]
    if per_width.empty:
        lines.append(r"\multicolumn{8}{c}{no point has a circuit: no frontier} \\")
    for i, (_, block) in enumerate(per_width.groupby("scope", sort=False)):
        if i:
            lines.append(r"\midrule")
        lines += [_row(p, p["point"] in overall) for _, p in block.sort_values("val_loss").iterrows()]
    hv = "; ".join(f"{escape(r['scope'])} {r['hypervolume']:.2f}" for _, r in hypervolumes.iterrows()
                   if math.isfinite(r["hypervolume"]))
    ref = hypervolumes.iloc[0] if len(hypervolumes) else None
    caption = (r"Pareto-optimal points of held-out loss against circuit size (geometric mean of edges over solved "
               r"tasks) per width; $^\star$: also on the overall frontier. Loss: mean over seeds $\pm$ half the "
               r"95\% $t$ interval; edges: geometric mean over seeds.")
    if ref is not None:
        caption += (rf" Hypervolume (nats/byte $\times$ decades of edges, reference {ref['ref_val_loss']:g} nats/byte, "
                    rf"{_power_of_ten(ref['ref_edges'])} edges): {hv}.")
    if note:
        caption += " " + escape(note)
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:frontier}", r"\end{table}", ""]
    return "\n".join(lines)
