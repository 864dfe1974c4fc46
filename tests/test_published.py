"""Published figures beside measured ones: sources, agreement, quoted accuracy, "not published" cells."""
from __future__ import annotations

import pandas as pd

from poolbench.report.placement import placement_comparison
from poolbench.report.published import ACCURACY, COSTS
from poolbench.report.published_view import accuracy_rows, cost_rows, plot_worth


def _row(model, pooler, tier, **values):
    return {"model": model, "pooler": pooler, "tier": tier, **values}


NET = pd.DataFrame([
    _row("resnet50", "max", "torchvision", params=25_557_032, params_overhead_pct=0.0, macs_fvcore=4.13e9,
         latency_train=10.0),
    _row("resnet50@authors", "max", "torchvision", params=25_557_032, params_overhead_pct=0.0, macs_fvcore=4.13e9,
         latency_train=10.0),
    _row("resnet50@authors", "lip", "vectorized", params=23_864_232, params_overhead_pct=-6.624,
         macs_fvcore=5.40e9, latency_train=12.0),
    _row("resnet50", "lip", "vectorized", params=26_733_224, params_overhead_pct=4.602, macs_fvcore=5.5e9,
         latency_train=14.0),
    _row("resnet50", "s3pool", "vectorized", params=25_557_032, params_overhead_pct=0.0, macs_fvcore=4.0e9,
         latency_train=11.0),
])


def test_every_published_figure_names_its_source():
    assert all(figure.source for figure in COSTS) and all(quote.source for quote in ACCURACY)


def test_lip_resnet_figures_agree_and_say_why_not_when_not_comparable():
    rows = {row["figure"]: row for row in cost_rows(NET, 224)}
    params = rows["LIP-ResNet-50 parameters"]
    assert params["published"].startswith("23.90M") and params["measured"] == "23.86M (23,864,232)"
    assert params["agrees"] == "yes" and params["source"] == "sebgao/LIP imagenet/README.md (Summary table)"
    assert rows["LIP-ResNet-50 FLOPs (224²)"]["agrees"] == "yes"  # 5.40 vs 5.33: within 2%
    assert rows["LIP-ResNet-50 FLOPs vs ResNet-50"]["measured"] == "+30.8%"
    assert rows["LIP-ResNet-101 parameters"]["agrees"] == "–"
    assert rows["LIP-ResNet-101 parameters"]["measured"].startswith("not measured")
    at_64 = {row["figure"]: row for row in cost_rows(NET, 64)}
    assert at_64["LIP-ResNet-50 FLOPs (224²)"]["measured"] == "published at 224²; this run used 64²"
    wrong = NET.assign(macs_fvcore=NET["macs_fvcore"].where(NET["pooler"] != "lip", 6.0e9))
    assert {r["figure"]: r for r in cost_rows(wrong, 224)}["LIP-ResNet-50 FLOPs (224²)"]["agrees"].startswith("no:")


def test_quoted_accuracy_is_marked_and_sits_beside_the_measured_overhead():
    rows = [row for row in accuracy_rows(NET) if row["pooler"] == "lip"]
    resnet50 = rows[0]
    assert resnet50["dataset"] == "ImageNet val" and resnet50["accuracy change"] == "+1.79 pts"
    assert "quoted (not measured)" in resnet50 and resnet50["measured train-step overhead"] == "+20%"
    assert rows[1]["measured train-step overhead"] == "not measured"


def test_placement_table_says_not_published_where_no_author_built_the_network():
    rows = {row["pooler"]: row for row in placement_comparison(NET, ("max", "torchvision"))}
    assert rows["lip[vectorized]"]["params (authors)"] == "-6.624%"
    assert rows["lip[vectorized]"]["authors' network"] == "sebgao/LIP imagenet/lip_resnet.py"
    # S3Pool's authors built no ResNet-50: its cell says so (no other pooler's sites stand in)
    assert rows["s3pool[vectorized]"]["params (authors)"] == "not published"
    assert rows["s3pool[vectorized]"]["params (paper)"] == "+0.000%"
    paper_only = placement_comparison(NET[~NET["model"].str.contains("@")], ("max", "torchvision"))
    assert [row["pooler"] for row in paper_only] == ["lip[vectorized]"], "only poolers with an authors' network"
    assert paper_only[0]["params (authors)"] == "–"


def test_one_worth_plot_per_network_with_labelled_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = dict(plot_worth(plt, NET))
    assert list(figures) == ["worth_resnet50"]
    labels = [text.get_text() for text in figures["worth_resnet50"].axes[0].texts]
    assert labels == ["lip (ImageNet val; sebgao/LIP)"]
    plt.close("all")
