"""Figures of an analysis: token distribution and packing efficiency (matplotlib, Agg, PNG written atomically).

    token_distribution.png   total-token histogram (log), text vs image scatter, CDF with the
                             simulated max lengths, box plots of text / image / total tokens
    packing_efficiency.png   efficiency, samples per pack, samples dropped and fill vs max_length,
                             one line per strategy (and the buffered variant)
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from swift_plugins.analysis.outputs import Analysis, fmt_int, fmt_pct, inputs_text, variant_text
from swift_plugins.files import atomic_write_bytes
from swift_plugins.packing.planner import DEFAULT_STRATEGY

__all__ = ["plot_packing_efficiency", "plot_token_distribution"]

SCATTER_MAX_POINTS = 5000
LENGTH_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "tab:red")
STRATEGY_STYLE = {"ffd": ("tab:blue", "o"), "bfd": ("tab:purple", "D"), "greedy": ("tab:orange", "s"),
                  "next_fit": ("tab:green", "^"), "random": ("tab:red", "v")}  # one per planner.STRATEGIES


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_token_distribution(analysis: Analysis, path: str, *, recommended: Optional[int] = None) -> None:
    """2x2: total-token histogram, text vs image scatter, CDF with the simulated lengths, box plots."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    total = analysis.total_tokens
    thousands = FuncFormatter(lambda x, _: f"{x:,.0f}")
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    files = inputs_text(analysis.stats.get("inputs", {})).replace("`", "")
    fig.suptitle(f"Tokens per sample: {fmt_int(len(total))} samples of {files}",
                 fontsize=14)
    _histogram_panel(axes[0, 0], analysis, recommended, thousands)
    _text_image_panel(fig, axes[0, 1], analysis, thousands)
    _cdf_panel(axes[1, 0], analysis, recommended, thousands)
    _kinds_box_panel(axes[1, 1], analysis, thousands)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)


def _histogram_panel(ax, analysis: Analysis, recommended: Optional[int], thousands) -> None:
    """Total tokens per sample, 60 log-spaced bins, median / p95 / p99 (and the recommended length) marked."""
    total, st = analysis.total_tokens, analysis.stats
    hi = max(1, int(total.max()))
    bins = np.logspace(np.log10(max(1, int(total.min()))), np.log10(hi), 60)
    ax.hist(total, bins=bins, color="tab:blue", alpha=0.8, edgecolor="white", linewidth=0.3)
    ax.set_xscale("log")
    for key, color, label in (("median_total_tokens", "black", "median"), ("p95_total_tokens", "tab:orange", "p95"),
                              ("p99_total_tokens", "tab:red", "p99")):
        ax.axvline(st[key], color=color, linestyle="--", linewidth=1.2, label=f"{label} {st[key]:,.0f}")
    if recommended:
        ax.axvline(recommended, color="tab:purple", linewidth=1.8, label=f"recommended max_length {recommended:,}")
    ax.xaxis.set_major_formatter(thousands)
    ax.set_title("Total tokens per sample (log-spaced bins)")
    ax.set_xlabel("total tokens per sample (text + image, log scale)")
    ax.set_ylabel("samples per bin")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)


def _text_image_panel(fig, ax, analysis: Analysis, thousands) -> None:
    """Text vs image tokens: one point per sample up to SCATTER_MAX_POINTS samples, a log-density hexbin above."""
    total, text, image = analysis.total_tokens, analysis.text_tokens, analysis.image_tokens
    if len(total) <= SCATTER_MAX_POINTS:
        ax.scatter(image, text, s=6, alpha=0.6, color="tab:blue", label=f"one sample ({fmt_int(len(total))} in all)")
        ax.legend(fontsize=9, loc="upper right")
    else:  # 100k points overplot into stripes: show density instead
        hb = ax.hexbin(image, np.maximum(text, 1), yscale="log", gridsize=60, bins="log", cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="samples per cell (log scale)")
    ax.set_yscale("log")
    ax.set_title("Text vs image tokens per sample")
    ax.set_xlabel("image tokens per sample")
    ax.set_ylabel("text tokens per sample (log scale)")
    ax.yaxis.set_major_formatter(thousands)
    ax.xaxis.set_major_formatter(thousands)
    ax.grid(alpha=0.3)


def _cdf_panel(ax, analysis: Analysis, recommended: Optional[int], thousands) -> None:
    """Cumulative share of samples <= x, one vertical line per simulated max length with the share that fits."""
    total = analysis.total_tokens
    srt = np.sort(total)
    ax.plot(srt, np.arange(1, len(srt) + 1) / len(srt), color="tab:blue", linewidth=2, label="samples <= x")
    ax.set_xscale("log")
    for i, L in enumerate(analysis.max_lengths):
        frac = float((total <= L).mean())
        rec = L == recommended
        ax.axvline(L, color="tab:purple" if rec else LENGTH_COLORS[i % len(LENGTH_COLORS)],
                   linestyle="-" if rec else "--", linewidth=1.8 if rec else 1.3,
                   label=f"max_length {L:,}{' (recommended)' if rec else ''}: {fmt_pct(frac)} of samples fit")
    ax.xaxis.set_major_formatter(thousands)
    ax.set_ylim(0, 1.02)
    ax.set_title("Cumulative distribution of total tokens")
    ax.set_xlabel("total tokens per sample (log scale)")
    ax.set_ylabel("fraction of samples")
    ax.legend(fontsize=9, loc="lower right")
    ax.grid(alpha=0.3)


def _kinds_box_panel(ax, analysis: Analysis, thousands) -> None:
    """Box plots of text / image / total tokens (whiskers p1-p99; zeros shown as 1 on the log axis)."""
    data = [np.maximum(x, 1) for x in (analysis.text_tokens, analysis.image_tokens, analysis.total_tokens)]
    bp = ax.boxplot(data, whis=(1, 99), showfliers=True, patch_artist=True,
                    flierprops={"marker": ".", "markersize": 2, "alpha": 0.3})
    ax.set_xticks([1, 2, 3], ["text", "image", "total"])
    for patch, color in zip(bp["boxes"], ("tab:green", "tab:orange", "tab:blue")):
        patch.set_facecolor(color)
        patch.set_alpha(0.6)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(thousands)
    ax.set_title("Tokens per sample by kind (box: quartiles, whiskers: p1-p99)")
    ax.set_ylabel("tokens per sample (log scale)")
    ax.grid(alpha=0.3, axis="y")


def plot_packing_efficiency(analysis: Analysis, path: str, *, recommended: Optional[int] = None) -> None:
    """2x2 over max_length, one line per strategy (+ each buffered variant, + the default strategy with
    overlong split, dashed black): efficiency, samples per pack, records lost, fill ratio (min /
    mean / max over packs)."""
    plt = _plt()

    variants = _plotted_variants(analysis.simulations)
    lengths = analysis.max_lengths
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    fig.suptitle(f"Packing simulations: {fmt_int(analysis.num_samples)} samples, "
                 f"max_length {', '.join(f'{L:,}' for L in lengths)}", fontsize=14)
    _plot_variants(axes, variants, lengths)
    _plot_l1_bound(axes[0, 0], analysis.simulations)
    _format_efficiency_axes(axes, lengths, recommended, max(1, analysis.num_samples), variants)
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=min(4, len(labels)), fontsize=10,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    _save(fig, path)


def _plotted_variants(simulations: list) -> dict[tuple, list]:
    """Simulation entries grouped by (strategy, buffer, min fill, drop_last, split); split entries only for
    the default strategy without buffer (every strategy's split line would hide the others)."""
    variants: dict[tuple, list] = {}
    for e in simulations:
        split = e.get("overlong", "drop") == "split"
        if split and (e["strategy"] != DEFAULT_STRATEGY or e["buffer_size"] is not None):
            continue  # the split line of every strategy would hide the others; the tables have them all
        key = (e["strategy"], e["buffer_size"], e["min_fill_ratio"], e["drop_last"], split)
        variants.setdefault(key, []).append(e)
    return variants


def _plot_variants(axes, variants: dict[tuple, list], lengths) -> None:
    """One line per variant on the first three panels, and its min / mean / max fill as an error bar on the
    fourth (variants offset sideways within the closest pair of lengths so the bars do not overlap)."""
    width = float(np.diff(lengths).min()) if len(lengths) > 1 else lengths[0] * 0.2  # closest pair: no overlap
    offsets = np.linspace(-0.2, 0.2, len(variants)) * width
    for k, (key, entries) in enumerate(variants.items()):
        strategy, buf, fill, drop, split = key
        entries = sorted(entries, key=lambda e: e["global_max_length"])
        color, marker = STRATEGY_STYLE.get(strategy, ("gray", "x"))
        buffered = buf is not None
        label = variant_text(entries[0])
        style = {"color": "tab:purple" if buffered else "black" if split else color,
                 "marker": "D" if buffered else "*" if split else marker,
                 "linestyle": "--" if buffered or split else "-", "linewidth": 1.8, "markersize": 6, "label": label}
        x = np.array([e["global_max_length"] for e in entries], dtype=float)
        axes[0, 0].plot(x, [100 * e["efficiency"] for e in entries], **style)
        axes[0, 1].plot(x, [e["avg_samples_per_pack"] for e in entries], **style)
        axes[1, 0].plot(x, [e.get("records_lost", e["samples_dropped"]) for e in entries], **style)
        mean = np.array([e["efficiency"] for e in entries])
        lo = np.array([e["min_fill"] for e in entries])
        hi = np.array([e["max_fill"] for e in entries])
        axes[1, 1].errorbar(x + offsets[k], 100 * mean, yerr=[100 * (mean - lo), 100 * (hi - mean)], capsize=4,
                            color=style["color"], marker=style["marker"], linestyle="none")


def _plot_l1_bound(ax, simulations: list) -> None:
    """The efficiency the fewest possible packs (the L1 bound of the default strategy's one-window, overlong-drop
    entries) would give, dotted black; nothing when no entry has a bound."""
    l1 = sorted((e for e in simulations if e["strategy"] == DEFAULT_STRATEGY and e["buffer_size"] is None
                 and e.get("overlong", "drop") == "drop" and e["l1_bound"]),  # 0: every sample overlong, no bound
                key=lambda e: e["global_max_length"])
    if l1:
        ax.plot([e["global_max_length"] for e in l1],
                [100 * e["efficiency"] * e["num_packs"] / e["l1_bound"] for e in l1],
                color="black", linestyle=":", linewidth=1.2, label="L1 bound (fewest packs possible)")


def _format_efficiency_axes(axes, lengths, recommended: Optional[int], n: int, variants: dict[tuple, list]) -> None:
    """Titles, ticks at the simulated lengths, the recommended length, % of records on the records-lost panel
    (``n`` records), and a note there when every one-window strategy drops the same samples."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    thousands = FuncFormatter(lambda v, _: f"{v:,.0f}")
    titles = (("Packing efficiency", "efficiency (% of pack capacity used)"),
              ("Samples per pack", "mean samples per pack"),
              ("Records lost", "records not trained (overlong + drop_last; split: unsplittable)"),
              ("Fill ratio per pack (marker: mean, bar: min to max)", "pack fill (% of max_length)"))
    for ax, (title, ylabel) in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel("global_max_length (tokens per pack)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(lengths)
        ax.xaxis.set_major_formatter(thousands)
        ax.grid(alpha=0.3)
        if recommended:
            ax.axvline(recommended, color="gray", linestyle="-.", linewidth=1, label=f"recommended {recommended:,}")
    sec = axes[1, 0].secondary_yaxis("right", functions=(lambda v: 100 * v / n, lambda p: p * n / 100))
    sec.set_ylabel("% of records")
    axes[1, 0].yaxis.set_major_locator(MaxNLocator(integer=True))
    if len({tuple(e["samples_dropped"] for e in sorted(v, key=lambda e: e["global_max_length"]))
            for k, v in variants.items() if k[1] is None and not k[4]}) == 1:
        axes[1, 0].text(0.98, 0.97, "one-window strategies drop the same\noverlong samples: their lines coincide",
                        transform=axes[1, 0].transAxes, ha="right", va="top", fontsize=9,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
