"""Data: datalists, label remapping, intensity scaling, transforms and the digital phantom."""
