"""The one version string: pyproject.toml reads it (setuptools dynamic
version, without importing the package) and ipex_train re-exports it."""
__version__ = "0.1.0"
