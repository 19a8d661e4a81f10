"""The paper's protocol end to end (``reproduce``): collect → train → export → measure → adapt → tables."""
