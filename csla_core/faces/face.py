"""One detected face: its box, score and 5 landmarks (what detection gives and alignment reads)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Face:
    """One detected face, in the coordinates of the image given to the detector."""

    box: np.ndarray  # float32 [4]: x0, y0, x1, y1
    score: float  # MTCNN final-stage probability
    landmarks: np.ndarray  # float32 [5, 2]: left eye, right eye, nose, mouth left, mouth right

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Short side of the box in pixels (what decides whether a crop is usable)."""
        return min(self.width, self.height)

    def describe(self) -> str:
        x0, y0, x1, y1 = (round(float(v)) for v in self.box)
        return (
            f"box ({x0}, {y0}, {x1}, {y1}), score {self.score:.3f}, "
            f"size {self.width:.0f}x{self.height:.0f} px"
        )
