"""matplotlib, imported when a figure is drawn: it is the optional `plot` extra."""

from __future__ import annotations

import logging

log = logging.getLogger("memmodel.plotting")


def pyplot(path):
    """matplotlib.pyplot on the Agg backend, or None (with a warning naming `path`, the
    figure that is then not written) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'memmodel[plot]'): %s not "
                    "written", path)
        return None
    return plt
