"""Faces + attributes stage: images listed in the manifest -> labels.parquet (one row per image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from fairbench.classifiers.base import AttributeClassifier
from fairbench.errors import UserError
from fairbench.faces.base import FaceDetector, crop_face



def prob_column(attr: str, group: str) -> str:
    """Column holding P(group) for an attribute."""
    return f"p:{attr}:{group}"


def label_batch(images: list[Image.Image], detector: FaceDetector, classifier: AttributeClassifier,
                margin: float = 0.2, low_confidence: float = 0.8) -> list[dict[str, Any]]:
    """The one labeller: detect the largest face of each image, classify the crops, one record per image
    (face, box, detector confidence, per-attribute probabilities, label and confidence)."""
    specs = classifier.specs()
    aux_groups = classifier.auxiliary_groups()
    dets = detector.detect(images)
    crops = [crop_face(im, d, margin) for im, d in zip(images, dets) if d is not None]
    probs = classifier.predict(crops) if crops else {a: np.zeros((0, s.k)) for a, s in specs.items()}
    records: list[dict[str, Any]] = []
    j = 0
    for d in dets:
        rec: dict[str, Any] = {"face": d is not None, "face_confidence": d.confidence if d else np.nan,
                               "n_faces": d.n_faces if d else 0}
        for i, name in enumerate(("box_x0", "box_y0", "box_x1", "box_y1")):
            rec[name] = d.box[i] if d else np.nan
        for attr, spec in specs.items():
            p = probs[attr][j] if d is not None else None
            for g, name in enumerate(spec.group_names):
                rec[prob_column(attr, name)] = float(p[g]) if p is not None else np.nan
            rec[attr] = spec.group_names[int(np.argmax(p))] if p is not None else None
            rec[f"{attr}_confidence"] = float(np.max(p)) if p is not None else np.nan
            rec[f"{attr}_low_confidence"] = bool(np.max(p) < low_confidence) if p is not None else False
        for aux, names in aux_groups.items():
            p = probs[aux][j] if d is not None else None
            rec[aux] = names[int(np.argmax(p))] if p is not None else None
            rec[f"{aux}_confidence"] = float(np.max(p)) if p is not None else np.nan
        j += d is not None
        records.append(rec)
    return records


def read_labels(path: Path) -> pd.DataFrame:
    """A run's labels.parquet, with a one-line error when it is not one."""
    try:
        labels = pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"{path} not found: label the run with `fairbench classify`") from None
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise UserError(f"{path} is not a readable labels file ({type(exc).__name__}): label the run again with "
                        "`fairbench classify`") from None
    if not {"key", "image", "face"} <= set(labels.columns):
        raise UserError(f"{path} lacks the columns key, image and face: label the run again with `fairbench classify`")
    return labels


def label_images(
    run_dir: Path,
    rows: list[dict[str, Any]],
    detector: FaceDetector,
    classifier: AttributeClassifier,
    margin: float = 0.2,
    low_confidence: float = 0.8,
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Label every image a run's manifest lists: one row per image (ids from the manifest, then `label_batch`)."""
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), unit="img", desc="faces+attributes", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [Image.open(run_dir / r["image"]).convert("RGB") for r in chunk]
        for r, rec in zip(chunk, label_batch(images, detector, classifier, margin, low_confidence)):
            records.append({"key": r["key"], "prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"],
                            "image": r["image"], "nsfw": bool(r.get("nsfw", False)), **rec})
        bar.update(len(chunk))
    bar.close()
    return pd.DataFrame.from_records(records)
