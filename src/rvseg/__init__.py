"""rvseg: right-ventricle segmentation for cardiac MRI."""

__version__ = "0.1.0"
