"""Builds the optional C kernel of the mixture prior (src/sws/prior/_kernel.c).

All metadata lives in pyproject.toml.  If no C compiler is available the
package still installs and falls back to an exact PyTorch implementation.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("sws.prior._kernel", ["src/sws/prior/_kernel.c"],
                             extra_compile_args=["-O2", "-fno-math-errno", "-ffp-contract=off"],
                             optional=True)])
