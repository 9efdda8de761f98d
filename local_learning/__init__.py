"""Local learning: a network trained as K gradient-isolated modules with local losses, with successive gradient
reconciliation (Yang et al., ICML 2024) between neighbouring modules, in local-BP and BP-free settings.

Shape letters: B batch, H/W height/width, C channels, T tokens, D width, F features per example.
"""

from local_learning.errors import ConfigError, DataError

__all__ = ["ConfigError", "DataError"]
