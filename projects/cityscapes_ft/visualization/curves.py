"""Training curves from metrics.json: losses, learning rate, evaluation metrics."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import read_metrics  # noqa: E402
from ..errors import CityscapesFTError  # noqa: E402

EVAL_KEYS = ("cityscapes/AP", "cityscapes/AP50", "bbox/AP", "segm/AP")


def plot_training_curves(metrics_json: str, out_png: str) -> str:
    """Losses, each part's LR and evaluation AP from OUTPUT_DIR/metrics.json as one PNG."""
    records = read_metrics(metrics_json)
    if not records:
        raise CityscapesFTError(f"No training records in {metrics_json}: has the run written any (every CITYSCAPES_FT.METRICS_PERIOD iterations)?")

    def series(key):
        points = [(r["iteration"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    loss_keys = sorted({k for r in records for k in r if k.startswith("loss_") or k == "total_loss"})
    eval_keys = [k for k in EVAL_KEYS if any(k in r for r in records)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in loss_keys:
        axes[0].plot(*series(key), label=key, linewidth=2 if key == "total_loss" else 1)
    axes[0].set_title("losses")
    axes[0].legend(fontsize=7)
    axes[1].plot(*series("lr"), color="tab:orange", label="lr (scheduled)")
    lr_iters, lr_values = series("lr")
    for part in ("backbone", "fpn", "heads"):
        iters, values = series(f"lr/{part}")
        if values and values != lr_values[: len(values)]:  # only parts with their own multiplier
            axes[1].plot(iters, values, linestyle="--", label=f"lr/{part}")
    frozen = [i for i, v in zip(*series("backbone_frozen")) if v]
    if frozen:
        axes[1].axvspan(min(frozen), max(frozen) + 1, color="tab:blue", alpha=0.12, label="backbone frozen")
    axes[1].set_title("learning rate")
    axes[1].legend(fontsize=7)
    for key in eval_keys:
        axes[2].plot(*series(key), marker="o", label=key)
    axes[2].set_title("evaluation (AP, %)" if eval_keys else "evaluation (none logged)")
    if eval_keys:
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
