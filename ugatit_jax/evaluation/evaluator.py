"""The one evaluator, used by training and by ``python -m ugatit_jax.evaluate``: same images, numbers and key names.

Per direction X->Y on the held-out test images, each number beside its baseline, the untranslated input
(``..._input``), the score a translation must beat:

* ``eval/X2Y/target_rate``: share of translations the domain classifier (``domain_classifier.py``, trained on the
  training splits) assigns to Y; the input scores about 1 - its held-out accuracy. ``eval/classifier_accuracy``
  is that held-out accuracy on both test splits: the measure means little below ~95%.
* ``eval/X2Y/kid_domain``: KID between translations and the real Y test images in the classifier's penultimate
  layer (unbiased MMD^2, cubic kernel, as ``metrics.kid``); lower is more Y-like.
* ``eval/X2Y/hf_ratio``: high-frequency energy (``metrics.hf_energy``, mean absolute Laplacian of luminance) of
  the translations over that of the real Y test images: 1.0 is as busy as real Y images, well above is speckled,
  well below is blurred. The input scores its own split's energy over Y's.
* ``eval/X2Y/top1``, ``top5`` (datasets with test pairs): content retrieval (``retrieval.py``); the true target
  itself scores 1.
* ``eval/X2Y/l1``, ``psnr``, ``ssim`` (test pairs): paired against the true target. They reward copying the input
  when the domains differ in geometry (emoji), so read them with the two measures above.
* ``eval/X2Y/kid_x100``, ``kid_x100_std``, ``fid`` (only given Inception weights): the paper's KID x 100 and FID.

A number that cannot be computed (SSIM below 11 px, the PSNR of identical images, KID with one image, the
``hf_ratio`` of flat targets) is left
out of ``scores`` and named in ``notes``. Everything that does not depend on the generators (test images,
classifier outputs and content features of the real images, all baselines) is computed once and reused.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from ugatit_jax.directions import DIRECTIONS, domains, label
from ugatit_jax.evaluation import domain_classifier as dc
from ugatit_jax.evaluation import metrics, retrieval
from ugatit_jax.evaluation.measures import MEASURES, key

log = logging.getLogger("ugatit_jax")

# translate(uint8 (n, S, S, 3) batch) -> (n, S, S, 3) translations, float in [-1, 1] or uint8
Translate = Callable[[np.ndarray], np.ndarray]


def make_translators(family, graphdefs: dict) -> Callable[[dict], dict[str, Translate]]:
    """``bind(state) -> {'A2B': ..., 'B2A': ...}`` for a family's graph definitions and the translating networks'
    ``name -> (params, sn)`` (``inference.translation_state``). Compiled once here, so evaluating every few
    thousand steps reuses the programs."""
    from ugatit_jax.inference import make_translate_fn

    fn = make_translate_fn(family, graphdefs)

    def bind(state: dict) -> dict[str, Translate]:
        return {d: functools.partial(_first, fn, state, direction=d) for d in DIRECTIONS}

    return bind


def _first(fn, state, batch, *, direction):
    return fn(state, batch, direction)[0]


@dataclasses.dataclass
class TestSet:
    """Every readable test image at the model's size, in split order, and the known pairs among them."""

    images: dict  # 'testA' / 'testB' -> uint8 (N, S, S, 3)
    keys: dict  # split -> keys of those images
    pairs: np.ndarray  # (P, 2) rows (index in testA, index in testB) of readable pairs
    skipped: list  # unreadable files, named

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(images) for split, images in self.images.items()}


def load_test_set(source, img_size: int) -> TestSet:
    """The official test transform of both test splits; unreadable files are left out and named, never fatal,
    and a pair with an unreadable side is dropped."""
    from ugatit_jax.data import DatasetError, iterate_test

    images, keys, skipped = {}, {}, []
    for split in ("testA", "testB"):
        batches = iterate_test(source.split(split), img_size=img_size, batch_size=64)
        arrays, names = [], []
        for batch, batch_keys in batches:
            arrays.append(batch)
            names += batch_keys
        if not arrays:
            raise DatasetError(f"the test split {split} of {source.name} has no readable images; nothing to evaluate")
        images[split], keys[split] = np.concatenate(arrays), names
        skipped += batches.skipped
    index = {split: {k: i for i, k in enumerate(keys[split])} for split in keys}
    pairs = [
        (index["testA"][k], index["testB"][k])
        for k, _, _ in source.test_pairs
        if k in index["testA"] and k in index["testB"]
    ]
    return TestSet(images, keys, np.asarray(pairs, np.int64).reshape(-1, 2), skipped)


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(energy: float, reference: float) -> float | None:
    """``metrics.hf_ratio`` from energies computed once; None (noted) when the real targets are all flat."""
    return energy / reference if reference > 0 else None


def paired_scores(outputs: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """L1 / PSNR / SSIM against the true targets; SSIM needs 11x11 images (its Gaussian window), else None."""
    return {
        "l1": _finite(metrics.l1(outputs, targets)),
        "psnr": _finite(metrics.psnr(outputs, targets)),
        "ssim": _finite(metrics.ssim(outputs, targets)) if min(outputs.shape[1:3]) >= 11 else None,
    }


class Evaluator:
    """``evaluator(translators) -> record``: every score of one model state on the test split (module docstring).

    ``source`` is the dataset (``data.get_source``), ``img_size`` the model's; ``inception_fn`` (features of uint8
    images, ``inception.make_feature_fn``) adds KID x 100 / FID. The record is JSON-ready: ``scores`` (flat,
    finite floats) plus what was evaluated (counts, pairs, skipped files, the classifier and its cache path).
    """

    def __init__(
        self,
        source,
        img_size: int,
        *,
        batch_size: int | None = None,
        inception_fn=None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        classifier_dir: str | None = None,
        classifier_steps: int | None = None,
    ):
        self.source = source
        self.img_size = img_size
        self.batch_size = batch_size
        self.inception_fn = inception_fn
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.classifier_dir = classifier_dir
        self.classifier_steps = classifier_steps or None  # None / 0: the recipe's
        self._fixed = None

    # -- what does not depend on the generators, computed once -------------------------------------------------

    def _prepare(self) -> dict:
        if self._fixed is not None:
            return self._fixed
        started = time.perf_counter()
        test = load_test_set(self.source, self.img_size)
        model, info = dc.load_or_train(self.source, self.classifier_dir, steps=self.classifier_steps)
        score = dc.make_scorer(model)
        logits, feats = {}, {}
        for split, images in test.images.items():
            logits[split], feats[split] = score(images)
        inception = {}
        if self.inception_fn is not None:
            from ugatit_jax.evaluation.inception import extract_features

            for split, images in test.images.items():
                inception[split] = extract_features(self.inception_fn, images, batch_size=min(50, len(images)))
        content = {}
        if len(test.pairs):
            for split, column in (("testA", 0), ("testB", 1)):
                content[split] = retrieval.content_features(test.images[split][test.pairs[:, column]])
        accuracy = dc.held_out_accuracy(logits["testA"], logits["testB"])
        self._fixed = dict(
            test=test,
            score=score,
            logits=logits,
            feats=feats,
            hf_energy={split: metrics.hf_energy(images) for split, images in test.images.items()},
            inception=inception,
            content=content,
            classifier={
                "key": info["key"],
                "path": info["path"],
                "held_out_accuracy": accuracy,
                "trained_now": info["trained_now"],
                "steps": info.get("steps"),
                "train_seconds": info.get("train_seconds"),
                "train_images": info.get("train_images"),
            },
            baseline={},
            seconds=time.perf_counter() - started,
        )
        return self._fixed

    def _translate(self, fn: Translate, images: np.ndarray) -> np.ndarray:
        from ugatit_jax.inference import default_batch_size, padded_batches
        from ugatit_jax.pixels import to_uint8

        batch = max(1, min(self.batch_size or default_batch_size(), len(images)))
        out = []
        for x, n in padded_batches(list(images), batch):
            y = np.asarray(fn(x))[:n]
            out.append(y if y.dtype == np.uint8 else to_uint8(y))
        return np.concatenate(out)

    def _kid(self, x, y) -> float | None:
        if min(len(x), len(y)) < 2:
            return None
        mean, _ = metrics.kid(x, y, num_subsets=self.kid_subsets, subset_size=self.kid_subset_size)
        return _finite(mean)

    def _direction(self, fixed, name, src, tgt, domain, fake) -> tuple[dict, list[str]]:
        """{score name: value or None} for one direction; the input baselines are computed on first use."""
        test = fixed["test"]
        logits, feats = fixed["score"](fake)
        out = {
            "target_rate": dc.target_rate(logits, domain),
            "kid_domain": self._kid(feats, fixed["feats"][tgt]),
            "hf_ratio": _ratio(metrics.hf_energy(fake), fixed["hf_energy"][tgt]),
        }
        base = fixed["baseline"].get(name)
        if base is None:
            base = {
                "target_rate": dc.target_rate(fixed["logits"][src], domain),
                "kid_domain": self._kid(fixed["feats"][src], fixed["feats"][tgt]),
                "hf_ratio": _ratio(fixed["hf_energy"][src], fixed["hf_energy"][tgt]),
            }
        if len(test.pairs):
            col_src, col_tgt = (0, 1) if src == "testA" else (1, 0)
            rows_src, rows_tgt = test.pairs[:, col_src], test.pairs[:, col_tgt]
            gallery = fixed["content"][tgt]
            hits = retrieval.top_k(retrieval.content_features(fake[rows_src]), gallery)
            out.update({f"top{k}": v for k, v in hits.items()})
            out.update(paired_scores(fake[rows_src], test.images[tgt][rows_tgt]))
            if "top1" not in base:
                hits = retrieval.top_k(fixed["content"][src], gallery)
                base.update({f"top{k}": v for k, v in hits.items()})
                base.update(paired_scores(test.images[src][rows_src], test.images[tgt][rows_tgt]))
        if self.inception_fn is not None:
            from ugatit_jax.evaluation.inception import extract_features

            fake_features = extract_features(self.inception_fn, fake, batch_size=min(50, len(fake)))
            real = fixed["inception"][tgt]
            if min(len(fake_features), len(real)) >= 2:
                mean, std = metrics.kid(
                    fake_features, real, num_subsets=self.kid_subsets, subset_size=self.kid_subset_size
                )
                out.update(kid_x100=_finite(100 * mean), kid_x100_std=_finite(100 * std))
                out["fid"] = _finite(metrics.fid(fake_features, real))
                if "kid_x100" not in base:
                    mean, std = metrics.kid(
                        fixed["inception"][src], real, num_subsets=self.kid_subsets, subset_size=self.kid_subset_size
                    )
                    base.update(kid_x100=_finite(100 * mean), kid_x100_std=_finite(100 * std))
                    base["fid"] = _finite(metrics.fid(fixed["inception"][src], real))
        fixed["baseline"][name] = base
        scores, missing = {}, []
        for metric, value in [*out.items(), *((f"{k}_input", v) for k, v in base.items())]:
            if value is None:
                missing.append(metric)
            else:
                scores[key(name, metric)] = float(value)
        return scores, missing

    def __call__(self, translators: dict[str, Translate]) -> dict:
        """Translate both test splits with ``translators['A2B']`` / ``['B2A']`` and score them."""
        started = time.perf_counter()
        fixed = self._prepare()
        test = fixed["test"]
        scores = {"eval/classifier_accuracy": fixed["classifier"]["held_out_accuracy"]}
        notes = []
        if not len(test.pairs):
            notes.append(f"top-k retrieval and L1/PSNR/SSIM skipped: {self.source.name} has no known test pairs")
        translate_s = 0.0
        for name in DIRECTIONS:
            source, target = domains(name)
            src, tgt = f"test{source}", f"test{target}"  # the test splits translated from and judged against
            t0 = time.perf_counter()
            fake = self._translate(translators[name], test.images[src])
            translate_s += time.perf_counter() - t0
            direction_scores, missing = self._direction(fixed, name, src, tgt, target, fake)
            scores.update(direction_scores)
            if missing:
                notes.append(f"{name}: not computable here: {', '.join(missing)}")
        accuracy = fixed["classifier"]["held_out_accuracy"]
        if accuracy < 0.95:
            notes.append(
                f"the domain classifier's held-out accuracy is only {accuracy:.1%}: target_rate and kid_domain mean "
                "little on this dataset"
            )
        return {
            "dataset": self.source.name,
            "img_size": self.img_size,
            "test_images": test.counts,
            "pairs": int(len(test.pairs)),
            "skipped_images": list(test.skipped),
            "classifier": dict(fixed["classifier"]),
            "kid": {"subsets": self.kid_subsets, "subset_size": self.kid_subset_size, "seed": 0},
            "scores": scores,
            "notes": notes,
            "seconds": {
                "total": round(time.perf_counter() - started, 2),
                "translate": round(translate_s, 2),
                "setup_once": round(fixed["seconds"], 2),
            },
        }


def _cell(value, spec: str, width: int) -> str:
    return format(value, spec).rjust(width) if value is not None else "-".rjust(width)


def format_table(record: dict, title: str | None = None) -> str:
    """Rows = measures, columns = each direction's translation beside its untranslated input."""
    scores = record["scores"]
    acc = record["classifier"]["held_out_accuracy"]
    title = title or f"{record['dataset']} test split at {record['img_size']} px"
    lines = [
        f"{title}: {record['test_images']['testA']} + {record['test_images']['testB']} test images, "
        f"{record['pairs']} pairs; domain classifier held-out accuracy {acc:.1%}",
    ]
    header = f"{'':<34}" + "".join(f"{label(d, '->'):>9}{'input':>9}" for d in DIRECTIONS)
    lines += [header, "-" * len(header)]
    for m in MEASURES:
        cells = [(scores.get(key(d, m.name)), scores.get(key(d, m.name + "_input"))) for d in DIRECTIONS]
        if all(a is None and b is None for a, b in cells):
            continue
        lines.append(f"{m.label:<34}" + "".join(_cell(a, m.spec, 9) + _cell(b, m.spec, 9) for a, b in cells))
    lines += [f"note: {note}" for note in record["notes"]]
    return "\n".join(lines)


def write_record(record: dict, path: str) -> None:
    """The record as JSON, atomically (temp file + rename): a reader never sees half a file."""
    import json
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
