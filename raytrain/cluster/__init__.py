"""Clusters: cluster files (``files``), bringing them up and down (``launch``, with the
simulated cluster's ``processes``), and submitting jobs to them (``jobs``)."""
