"""The robustness summary of Michaelis et al. (2019), "Benchmarking Robustness in Object Detection":
performance under corruption mPC = the mean AP over corruptions and severities, and relative
performance rPC = mPC / clean AP (in %), for the official and the COCO mask AP."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# (task, metric) of the evaluator's results that the benchmark summarises
SUMMARY_METRICS = {"official mask AP": ("cityscapes", "AP"), "COCO mask AP": ("segm", "AP")}


def _metric(results, task, metric):
    value = (results or {}).get(task, {}).get(metric)
    return None if value is None else float(value)


def robustness_summary(bench):
    """Fills bench["mPC"], bench["rPC"] ({metric name: value}), bench["summary"] and bench["table"]
    (AP per corruption and severity, of the first summary metric present) from bench["clean"] and
    bench["corruptions"][name][severity] (evaluation results). Returns bench."""
    bench["mPC"], bench["rPC"], bench["summary"] = {}, {}, {}
    for name, (task, metric) in SUMMARY_METRICS.items():
        values = [_metric(res, task, metric) for per in bench.get("corruptions", {}).values() for res in per.values()]
        values = [v for v in values if v is not None]
        clean = _metric(bench.get("clean"), task, metric)
        if clean is None and not values:
            continue
        mpc = float(np.mean(values)) if values else None
        rpc = 100 * mpc / clean if mpc is not None and clean else None
        bench["mPC"][name], bench["rPC"][name] = mpc, rpc
        bench["summary"][name] = {"clean": clean, "mPC": mpc, "rPC": rpc}
    first = next((n for n in SUMMARY_METRICS if n in bench["summary"]), None)
    bench["table_metric"] = first
    if first:
        task, metric = SUMMARY_METRICS[first]
        bench["table"] = {c: {str(s): _metric(res, task, metric) for s, res in sorted(per.items())}
                          for c, per in bench.get("corruptions", {}).items()}
    return bench


def plot_robustness(bench, path):
    """AP against severity (0: clean) per corruption, with the mean over corruptions."""
    name = bench.get("table_metric")
    if not name:
        return None
    clean = bench["summary"][name]["clean"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    severities = sorted({int(s) for per in bench["table"].values() for s in per})
    for corruption, per in bench["table"].items():
        xs = [0] + [int(s) for s in sorted(per, key=int)]
        ys = [clean] + [per[s] for s in sorted(per, key=int)]
        ax.plot(xs, ys, marker=".", linewidth=1, alpha=0.7, label=corruption)
    means = [np.mean([per[str(s)] for per in bench["table"].values() if per.get(str(s)) is not None])
             for s in severities]
    ax.plot([0] + severities, [clean] + means, color="black", linewidth=3, label="mean")
    ax.set_xlabel("severity (0: clean)")
    ax.set_ylabel(name)
    s = bench["summary"][name]
    rpc = "n/a" if s["rPC"] is None else f"{s['rPC']:.1f}%"
    ax.set_title(f"{name} under corruption: mPC {s['mPC']:.2f}, rPC {rpc}")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
