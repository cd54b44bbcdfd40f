"""Builds the optional C extensions: the mixture prior's kernel (src/sws/prior/_kernel.c) and the
range coder of the file format (src/sws/format/_coder.c).

All metadata lives in pyproject.toml.  If no C compiler is available the
package still installs and falls back to exact Python implementations.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("sws.prior._kernel", ["src/sws/prior/_kernel.c"],
                             extra_compile_args=["-O2", "-fno-math-errno", "-ffp-contract=off"],
                             optional=True),
                   Extension("sws.format._coder", ["src/sws/format/_coder.c"],
                             extra_compile_args=["-O2"], optional=True)])
