"""podbench: a benchmark and ablation harness for classification loss functions.

Rooms: ``podbench.losses`` (loss plugins), ``podbench.tasks`` (datasets and networks),
``podbench`` itself (specs, training engine, Ray execution, tuning, results, CLI) and
``podbench.reports`` (statistics, figures, HTML and LaTeX).
"""

from __future__ import annotations

from podbench.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
