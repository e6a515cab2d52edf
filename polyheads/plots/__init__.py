"""Pictures people would rather look at than read (matplotlib, Agg backend, saved to files)."""
from .scatter import scatter_matrix
from .bessel import bessel_ratio_figure
from .reliability import reliability_diagram
