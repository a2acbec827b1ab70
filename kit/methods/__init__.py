"""The methods, one file each, all of the same shape (see docs/design.md).

Every module in this folder is imported by :func:`kit.method.load_methods`, so a new method
is registered by adding its file here: there is no second list to keep in step.
"""
