"""worldstream: an open, full-stack implementation of the Matrix-Game 3.0 recipe.

Importing the package has no side effects; every sub-package is imported on demand.
"""

__version__ = "0.1.0"
