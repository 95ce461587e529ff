"""The evaluation measures, in order, and their score keys, named once for the console table
(``evaluator.format_table``) and the run's HTML page (``run_report.py``), so both show the same measures in the same
order (the page need not import the evaluator and its dependencies to read them)."""

from __future__ import annotations

from typing import NamedTuple


def key(direction: str, name: str) -> str:
    """The one naming scheme of the scores: ``eval/A2B/target_rate`` (``..._input`` for the untranslated input)."""
    return f"eval/{direction}/{name}"


class Measure(NamedTuple):
    name: str  # the score key's last part: eval/<direction>/<name> (and <name>_input for the untranslated input)
    label: str  # the console table's row label
    spec: str  # the console table's number format
    heading: str  # the report plot's heading
    better: str  # the report plot's note: what "better" means


# target_rate, kid_domain and hf_ratio work on any dataset; the rest need test pairs or Inception weights.
# fmt: off
MEASURES = tuple(Measure(*row) for row in (
    # (name, console label, console format,
    #  report heading, what "better" means)
    ("target_rate", "target_rate (classifier says Y)", ".3f",
     "target_rate: taken for the target domain", "higher is better"),
    ("kid_domain", "kid_domain (classifier features)", ".3f",
     "kid_domain: KID to real targets, classifier features", "lower is better"),
    ("hf_ratio", "hf_ratio (Laplacian vs real Y)", ".3f",
     "hf_ratio: high-frequency energy over real targets",
     "1.0 is as busy as real targets; above: speckled, below: blurred"),
    ("top1", "top1 content retrieval", ".3f",
     "top1: own target nearest in content space", "higher is better"),
    ("top5", "top5 content retrieval", ".3f",
     "top5: own target among the 5 nearest", "higher is better"),
    ("l1", "l1 to true target", ".4f",
     "l1 to the true target", "lower is better, yet copying the input scores well"),
    ("psnr", "psnr", ".2f",
     "psnr to the true target (dB)", "higher is better, yet copying the input scores well"),
    ("ssim", "ssim", ".4f",
     "ssim to the true target", "higher is better, yet copying the input scores well"),
    ("kid_x100", "kid_x100 (Inception)", ".3f",
     "kid_x100 (Inception)", "lower is better"),
    ("fid", "fid (Inception)", ".2f",
     "fid (Inception)", "lower is better"),
))
# fmt: on
