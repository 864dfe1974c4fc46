"""Markdown report of a results file: per-network and per-layer tables, plots, paper vs measured.

Speed and memory are shown as ratios against the baseline measured in the
same run — torchvision's unmodified network (``max[torchvision]``) and
``nn.MaxPool2d`` per layer — never as bare times from another run.
matplotlib is optional: without it the report has no plots and says so.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import models
from ..dpp import DPP_VARIANTS
from ..measure.timing import host_bound
from ..metrics import BASELINE_POOLER, BASELINE_TIER, CPU_MEMORY_METHOD
from .placement import placement_section
from .published import SLIDES
from .published_view import accuracy_section, cost_rows, plot_worth
from . import tables

__all__ = ["PAPER", "build_report", "paper_vs_measured", "write_plots"]

#: The slides' figures (Saeedan et al., CVPR 2018) the report checks.
PAPER = {
    "full_dpp_overhead_pct": {"resnet50": 0.172, "resnet101": 0.098},
    "params_per_feature_map": {"dpp_lite": 2, "dpp_full": 12},
    "vgg16_max_time_overhead_pct": 20.0,
}

#: The DPP variants, from the one list the DPP module registers.
DPP_POOLERS = tuple(variant.name for variant in DPP_VARIANTS)


# ----------------------------------------------------------------------------------------------
# tidy helpers
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def _header(frame: pd.DataFrame, name: str) -> str:
    env = frame.iloc[-1]
    get = lambda key: env[key] if key in env and not pd.isna(env[key]) else "?"  # noqa: E731
    statuses = frame.groupby("status").size().to_dict()
    lines = [
        f"# poolbench report: {name}",
        "",
        f"- device: **{get('device')}** ({get('device_name')}), {get('threads')} threads, dtype {get('dtype')}",
        f"- batch {get('batch')}, input {get('resolution')}², torch {get('torch')}, poolbench {get('poolbench')}, "
        f"commit `{get('commit')}`, {get('timestamp')}",
        f"- load average at start: {tables.number(get('load_avg'))} (CPU timings are only as good as the machine is quiet); "
        f"measuring took {frame['seconds'].sum() if 'seconds' in frame else float('nan'):.0f} s",
        f"- measured as: timing {_timing_mode(get('timing'))}, autocast {get('amp') if 'amp' in env else 'off'}, "
        f"channels-last {get('channels_last') if 'channels_last' in env else 'False'}; latency policy {get('timing')}",
        f"- rows: {statuses.get('ok', 0)} ok, {statuses.get('skipped', 0)} skipped, {statuses.get('error', 0)} errors "
        "(see *Cells that did not run*)",
        "",
        "Ratios are against the baseline measured in the same run: **max[torchvision]** is torchvision's unmodified "
        "network (max pooling, strided convolutions) and, per layer, `nn.MaxPool2d` with the layer's window. "
        "Latency: median (CUDA events with L2 flush on GPU, `torch.utils.benchmark` on CPU); *forward* is "
        "inference (eval, no autograd), *train* is forward+backward in train mode (no optimizer step). "
        f"Memory: *activation* = {CPU_MEMORY_METHOD}. MACs are multiply-accumulates per image (batch 1) at the run's "
        "input size, fvcore's convention; pooling layers are priced by poolbench's handles (see `poolbench.flops`).",
        "",
        "Placement (the paper's): VGG-16's five max pools are replaced; in ResNets the stem max pool becomes the pooler "
        "(k3 s2 p1) and each stride-2 block of layer2–4 pools its input (k2 s2, main path and shortcut separately) "
        "before stride-1 convolutions — 3648 pooled channels, as the paper's ResNet v1 placement. In ResNets the "
        "*max[vectorized]* row is this placement with max pooling; it needs ~5% fewer MACs than torchvision's "
        "network because the first 1×1 convolution of each such block then runs at the pooled resolution. "
        "Each pooler keeps its authors' per-site module there (LIP: the Bottleneck-128 logit module, one trunk "
        "per block, SimplifiedLIP at the stem); strided conv in ResNets is the original network. A network named "
        "*(authors' network)* is the one the pooler's authors built (see *Both placements, side by side*).",
        "",
    ]
    return "\n".join(lines)


def _timing_mode(settings: str) -> str:
    """The timing mode in a recorded ``Settings(...)`` string ("eager" when the file predates the field)."""
    return "graph (eager and CUDA-graph replays)" if "timing='graph'" in str(settings) else "eager"


def _host_bound(r: pd.Series) -> str:
    """"yes" where the eager train step (or forward) is well above its CUDA-graph replay, "–" without graph timing."""
    pairs = [(r.get(q), r.get(f"{q}_graph")) for q in ("latency_forward", "latency_train")]
    pairs = [(e, g) for e, g in pairs if e is not None and g is not None and not pd.isna(e) and not pd.isna(g)]
    if not pairs:
        return "–"
    return "**yes**" if any(host_bound(e, g) for e, g in pairs) else "no"


def _network_section(frame: pd.DataFrame, model: str) -> str:
    table = tables.values(frame[frame["model"] == model], "network")
    if table.empty:
        return f"## {models.title(model)}\n\n_no network measurements_\n"
    table = tables.with_ratios(table, "network", ["model"])
    rows = [{"pooler[tier]": tables.label(r["pooler"], r["tier"]), **tables.metric_cells(r, "network"),
             "host-bound": _host_bound(r)} for _, r in tables.order(table).iterrows()]
    baseline = table[(table["pooler"] == BASELINE_POOLER) & (table["tier"] == BASELINE_TIER)]
    note = ""
    if not baseline.empty:
        b = baseline.iloc[0]
        note = (f"Baseline: forward {tables.fmt(b.get('latency_forward'), 3)} ms, train {tables.fmt(b.get('latency_train'), 3)} ms "
                f"(absolute times for orientation only).\n\n")
    return f"## {models.title(model)}\n\n{note}" + tables.markdown(rows)


def _layer_section(frame: pd.DataFrame, model: str) -> str:
    table = tables.values(frame[frame["model"] == model], "layer")
    if table.empty:
        return ""
    table = tables.with_ratios(table, "layer", ["model", "layer"])
    # network order (as measured), not alphabetical
    raw = frame[(frame["model"] == model) & (frame["scope"] == "layer")]
    layer_order = {layer: i for i, layer in enumerate(dict.fromkeys(raw["layer"]))}
    table = tables.order(table).assign(_layer=lambda t: t["layer"].map(layer_order)).sort_values("_layer", kind="stable")
    rows = [{"layer": r["layer"], "input": r["shape"], "pooler[tier]": tables.label(r["pooler"], r["tier"]),
             **tables.metric_cells(r, "layer"), "host-bound": _host_bound(r)} for _, r in table.iterrows()]
    return f"### {models.title(model)}: per layer\n\n" + tables.markdown(rows)


def _flop_check_section(frame: pd.DataFrame) -> str:
    layers = tables.values(frame, "layer")
    if layers.empty or "macs_flop_counter" not in layers:
        return ""
    rows = []
    for (pooler, tier), group in layers.groupby(["pooler", "tier"], sort=True):
        fc = group["macs_flop_counter"].sum()
        fv = group["macs_fvcore"].sum() if "macs_fvcore" in group else float("nan")
        analytic = group["macs_analytic"].sum() if "macs_analytic" in group else float("nan")
        rows.append({
            "pooler[tier]": tables.label(pooler, tier),
            "layers": len(group),
            "MMACs FlopCounterMode": tables.scaled(fc, 1e6, 3),
            "MMACs fvcore": tables.scaled(fv, 1e6, 3),
            "FlopCounterMode / fvcore": tables.fmt(fc / fv if fv else float("nan"), 3),
            "counted / analytic": tables.fmt(fc / analytic if analytic else float("nan"), 2),
            "non-zero": "yes" if fc > 0 and (math.isnan(fv) or fv > 0) else "**no**",
        })
    return ("## FLOP cross-check (pooling layers, all networks)\n\n"
            "Both counters use poolbench's handles; *counted / analytic* > 1 is the masking and bookkeeping "
            "arithmetic of plain-PyTorch tiers beyond the pooler's definition; fused kernels (custom ops) are "
            "priced by the formula (= 1).\n\n" + tables.markdown(rows))


def paper_vs_measured(frame: pd.DataFrame) -> list[dict]:
    """Rows comparing the slides' figures with this run's measurements."""
    rows: list[dict] = []
    net = tables.values(frame, "network")

    def lookup(model: str, pooler: str, quantity: str):
        if net.empty or quantity not in net:
            return []
        sel = net[(net["model"] == model) & (net["pooler"] == pooler)]
        return [(r["tier"], r[quantity]) for _, r in sel.iterrows() if not pd.isna(r[quantity])]

    for model, paper in PAPER["full_dpp_overhead_pct"].items():
        measured = lookup(model, "dpp_full_sym", "params_overhead_pct") or lookup(model, "dpp_full_asym",
                                                                                   "params_overhead_pct")
        overhead = lookup(model, "dpp_full_sym", "params_overhead") or lookup(model, "dpp_full_asym",
                                                                              "params_overhead")
        rows.append({
            "figure": f"Full-DPP parameter overhead, {models.title(model)}",
            "published": f"{paper:.3f}%",
            "source": SLIDES + ", 'Properties'",
            "measured": (f"{measured[0][1]:.3f}% (+{int(overhead[0][1]):,} params)" if measured else "not measured"),
            "agrees": ("yes" if measured and round(measured[0][1], 3) in (paper, round(paper - 0.001, 3))
                       else ("close" if measured and abs(measured[0][1] - paper) < 0.005 else "–")),
        })
    for family, paper in PAPER["params_per_feature_map"].items():
        found = None
        for model in ("resnet50", "resnet101", "vgg16"):
            for pooler in (f"{family}_sym", f"{family}_asym"):
                overhead = lookup(model, pooler, "params_overhead")
                if overhead:
                    channels = sum(site.channels for site in models.pool_sites(model))
                    found = (model, overhead[0][1] / channels, channels)
                    break
            if found:
                break
        label = "Lite-DPP" if family == "dpp_lite" else "Full-DPP"
        rows.append({
            "figure": f"{label} parameters per feature map",
            "published": f"{paper}" + (" (2 + 10)" if family == "dpp_full" else ""),
            "source": SLIDES + ", 'Properties'",
            "measured": (f"{found[1]:g} ({models.title(found[0])}, {found[2]} pooled channels)" if found
                         else "not measured"),
            "agrees": ("yes" if found and abs(found[1] - paper) < 1e-9 else "–"),
        })
    for pooler in DPP_POOLERS:
        for tier, ratio_train, ratio_fwd in _vgg_time_ratios(net, pooler):
            overhead = 100 * (ratio_train - 1)
            rows.append({
                "figure": f"VGG-16 time overhead, {tables.label(pooler, tier)} (train step)",
                "published": f"≤ {PAPER['vgg16_max_time_overhead_pct']:.0f}%",
                "source": SLIDES + ", 'Properties' (worst case, the authors' GPU)",
                "measured": f"{overhead:+.0f}% (forward {100 * (ratio_fwd - 1):+.0f}%)",
                "agrees": "yes" if overhead <= PAPER["vgg16_max_time_overhead_pct"] else "no",
            })
    # every other pooler's published costs (LIP-ResNet's parameters and FLOPs, the baselines' FLOPs)
    resolution = frame.iloc[-1].get("resolution", "?") if not frame.empty else "?"
    rows += [row for row in cost_rows(net, _int_or(resolution)) if "DPP" not in row["figure"]]
    return rows


def _int_or(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _vgg_time_ratios(net: pd.DataFrame, pooler: str) -> list[tuple[str, float, float]]:
    if net.empty or "latency_train" not in net:
        return []
    vgg = net[net["model"] == "vgg16"]
    base = vgg[(vgg["pooler"] == BASELINE_POOLER) & (vgg["tier"] == BASELINE_TIER)]
    if base.empty:
        return []
    base_train, base_fwd = base.iloc[0]["latency_train"], base.iloc[0].get("latency_forward", float("nan"))
    out = []
    for _, r in vgg[vgg["pooler"] == pooler].iterrows():
        if not pd.isna(r["latency_train"]):
            out.append((r["tier"], r["latency_train"] / base_train, r.get("latency_forward", float("nan")) / base_fwd))
    return out


def _paper_section(frame: pd.DataFrame) -> str:
    env = frame.iloc[-1]
    note = (f"Time overheads are this run's train-step (forward+backward) latency ratio vs max pooling on VGG-16, "
            f"{env.get('device', '?')} ({env.get('device_name', '?')}), batch {env.get('batch', '?')}, "
            f"{env.get('resolution', '?')}²; the paper timed its own GPU implementation.\n\n")
    net = tables.values(frame, "network")
    placements = placement_section(net, (BASELINE_POOLER, BASELINE_TIER), tables.markdown)
    return ("## Paper vs measured\n\n" + note + "Every figure a pooler's paper or official repository publishes "
            "for these networks, with its source; *measured* is this run's.\n\n"
            + tables.markdown(paper_vs_measured(frame)) + "\n\n" + placements + "\n\n"
            + accuracy_section(net, tables.markdown))


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def write_plots(frame: pd.DataFrame, out_dir: Path, name: str) -> tuple[list[Path], str | None]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: no plots (pip install matplotlib)"
    written: list[Path] = []
    figures = [(suffix, draw(plt, frame)) for suffix, draw in (("latency", _plot_network_latency),
                                                                ("layers", _plot_layer_latency))]
    figures += plot_worth(plt, tables.values(frame, "network"))  # one per network: quoted accuracy vs overhead
    for suffix, fig in figures:
        if fig is not None:
            fig.tight_layout()
            path = out_dir / f"{name}_{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written, None


def _plot_network_latency(plt, frame: pd.DataFrame):
    """Bars: each pooler's network latency / the max-pool network's, forward and train step, per model."""
    net = tables.values(frame, "network")
    if net.empty or "latency_train" not in net:
        return None
    net = net.assign(train_ratio=tables.ratio(net, "latency_train", ["model"]),
                     fwd_ratio=tables.ratio(net, "latency_forward", ["model"]))
    models_present = [m for m in models.MODELS if m in set(net["model"])] + sorted(set(net["model"]) - set(models.MODELS))
    labels = [tables.label(p, t) for p, t in dict.fromkeys(zip(tables.order(net)["pooler"], tables.order(net)["tier"]))]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(labels) + 4), 4.5), sharey=False)
    width = 0.8 / max(len(models_present), 1)
    for ax, column, title in ((axes[0], "fwd_ratio", "forward (inference)"), (axes[1], "train_ratio", "train step")):
        for i, model in enumerate(models_present):
            sel = net[net["model"] == model].assign(label=lambda t: [tables.label(p, q) for p, q in zip(t["pooler"], t["tier"])])
            values = [sel.loc[sel["label"] == lab, column].mean() if (sel["label"] == lab).any() else float("nan")
                      for lab in labels]
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=models.title(model))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + width * (len(models_present) - 1) / 2 for x in range(len(labels))])
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("latency / max pooling network")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return fig


def _plot_layer_latency(plt, frame: pd.DataFrame):
    """Lines: each pooler's train-step latency / nn.MaxPool2d's, layer by layer, one panel per model."""
    layers = tables.values(frame, "layer")
    if layers.empty or "latency_train" not in layers:
        return None
    layers = layers.assign(train_ratio=tables.ratio(layers, "latency_train", ["model", "layer"]),
                           graph_ratio=tables.ratio(layers, "latency_train_graph", ["model", "layer"]))
    models_present = [m for m in models.MODELS if m in set(layers["model"])]
    if not models_present:
        return None
    fig, axes = plt.subplots(1, len(models_present), figsize=(5 * len(models_present), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models_present):
        sel = layers[layers["model"] == model]
        raw = frame[(frame["model"] == model) & (frame["scope"] == "layer")]
        order = [layer for layer in dict.fromkeys(raw["layer"]) if layer in set(sel["layer"])]
        for (pooler, tier), group in tables.order(sel).groupby(["pooler", "tier"], sort=False):
            if pooler == BASELINE_POOLER and tier == BASELINE_TIER:
                continue
            group = group.set_index("layer").reindex(order)
            line, = ax.plot(range(len(order)), group["train_ratio"], marker="o", label=tables.label(pooler, tier))
            if group["graph_ratio"].notna().any():  # --timing graph: the device time alone, dashed beside it
                ax.plot(range(len(order)), group["graph_ratio"], marker="x", linestyle="--", color=line.get_color(),
                        label=f"{tables.label(pooler, tier)} (graph)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{models.title(model)}: per layer, train step (solid: eager, dashed: CUDA graph)"
                     if sel.get("latency_train_graph") is not None and sel["latency_train_graph"].notna().any()
                     else f"{models.title(model)}: per layer, train step")
        ax.set_ylabel("latency / nn.MaxPool2d")
    axes[0][-1].legend(fontsize=7, loc="best")
    return fig


# ----------------------------------------------------------------------------------------------
# assembling
# ----------------------------------------------------------------------------------------------


def build_report(frame: pd.DataFrame, name: str, plots: list[Path] = (), plot_note: str | None = None,
                 missing=()) -> str:
    """The markdown text of the report for the rows in ``frame`` (``missing``: cells no rank measured)."""
    models_present = [m for m in models.MODELS if m in set(frame["model"])] + \
        sorted(set(frame["model"]) - set(models.MODELS))
    parts = [_header(frame, name), _paper_section(frame)]
    parts.append("# Networks\n")
    for model in models_present:
        parts.append(_network_section(frame, model))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    elif plot_note:
        parts.append(f"## Plots\n\n{plot_note}\n")
    layer_parts = [_layer_section(frame, model) for model in models_present]
    if any(layer_parts):
        parts.append("# Per layer\n\nEach pooling layer alone at the input shape it has in the network "
                     "(recorded with forward hooks); ratios against `nn.MaxPool2d` with the same window. "
                     "In ResNets a block's main path and shortcut pool the same tensor shape and are measured once.\n")
        parts.extend(p for p in layer_parts if p)
    parts.append(_flop_check_section(frame))
    parts.append(tables.missing_section(missing))
    parts.append(tables.failures_section(frame))
    return "\n".join(p for p in parts if p)
