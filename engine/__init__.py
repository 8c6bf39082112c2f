"""TopoPrune engine: topology-aware, FLOPs-constrained channel pruning of CNNs.

The engine never imports streamlit, plotly or the gui package; the GUI and the CLI sit on top of it.
"""

__version__ = "0.1.0"
