"""Jupyter UI for tficon (imported as ``tficon.widgets``).

Placeholder until the Explorer lands (issue 5); it exists so that packaging of this
directory as ``tficon.widgets`` is exercised by ``pip install .`` and ``pip install -e .``.
"""

__all__: list[str] = []
