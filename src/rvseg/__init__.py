"""rvseg: right-ventricle segmentation for cardiac MRI.

The library's public names are gathered in :mod:`rvseg.api` (``import rvseg.api as rv``); this
package itself stays light so that the command line starts quickly.
"""

__version__ = "0.1.0"
