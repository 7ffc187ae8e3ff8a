"""netlib: a stand-in for a third-party model package, written the way such packages often are.

Its ``__init__`` pulls in its training stack, which a user who only wants the network may not have installed;
edgeship can load ``netlib/models.py`` by file and never import this.
"""

from netlib.models import NORMALIZE, SmallConvNet, build
from netlib.training import fit

__all__ = ["NORMALIZE", "SmallConvNet", "build", "fit"]
