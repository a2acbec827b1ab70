"""kit: a study kit for unsupervised visual defect detection with normalizing flows.

Import the parts you need::

    from kit import data, metrics, runstore
    from kit.method import make_method, METHODS
"""

__version__ = "0.1.0"
