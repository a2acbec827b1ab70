"""kit: a study kit for unsupervised visual defect detection with normalizing flows.

Import the parts you need::

    from kit import data, metrics, runstore
    from kit.method import make_method, METHODS
"""

__version__ = "0.1.0"

from kit.allocator import tune_allocator as _tune_allocator

_tune_allocator()  # glibc keeps freed tensor memory for reuse (kit/allocator.py; KIT_TUNE_MALLOC=0: off)
