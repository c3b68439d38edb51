"""The VectorIndex port in process memory: exact cosine search with numpy.

For unit tests of the core and for trying svc_tools without any store; nothing survives
the process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from svc_tools.model import Hit, Space, VectorPoint


class NumpyVectorIndex:
    """Unit vectors per space, searched exhaustively."""

    def __init__(self) -> None:
        self._spaces: dict[Space, dict[str, npt.NDArray[np.float32]]] = {}

    async def upsert(self, space: Space, points: Sequence[VectorPoint]) -> None:
        stored = self._spaces.setdefault(space, {})
        for point in points:
            vector = np.asarray(point.vector, dtype=np.float32)
            stored[point.id] = vector / max(float(np.linalg.norm(vector)), 1e-12)

    async def search(
        self, spaces: Sequence[Space], vector: Sequence[float], *, threshold: float, limit: int
    ) -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        hits = []
        for space in spaces:
            for point_id, stored in self._spaces.get(space, {}).items():
                score = float(stored @ query)
                if score >= threshold:
                    hits.append(Hit(space, point_id, score))
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits[:limit]

    async def delete(self, space: Space, ids: Sequence[str]) -> None:
        stored = self._spaces.get(space, {})
        for point_id in ids:
            stored.pop(point_id, None)

    def count(self, space: Space) -> int:
        return len(self._spaces.get(space, {}))
