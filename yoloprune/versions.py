"""The Ultralytics releases yoloprune is tested with; any other gets one clear line, not a traceback later."""

from __future__ import annotations

import re

from yoloprune.errors import UserError

# The oldest release the test suite passed on (8.3.100 failed: no ultralytics.utils.nms, a `tests` package that
# shadows the project's). Keep in step with pyproject.toml.
ULTRALYTICS_MIN = (8, 4, 190)


def parse(version: str) -> tuple[int, ...]:
    """'8.4.190' -> (8, 4, 190); suffixes such as '.dev0' or 'rc1' are ignored."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", piece)) else 0 for piece in version.split(".")[:3])


def check_ultralytics(version: str | None = None) -> None:
    """Refuse an Ultralytics release older than ULTRALYTICS_MIN."""
    if version is None:
        import ultralytics

        version = ultralytics.__version__
    if parse(version) < ULTRALYTICS_MIN:
        need = ".".join(map(str, ULTRALYTICS_MIN))
        raise UserError(f"ultralytics {version} is older than this yoloprune supports (>= {need}); "
                        f"pip install 'ultralytics>={need}'")
