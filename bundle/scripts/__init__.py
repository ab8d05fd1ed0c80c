"""Python package of the X-ray -> CT bundle (imported by the configs as `scripts`)."""
