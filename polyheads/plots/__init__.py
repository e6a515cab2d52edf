"""Pictures people would rather look at than read (matplotlib, Agg backend, saved to files)."""
from .reliability import reliability_diagram
from .scatter import scatter_matrix
