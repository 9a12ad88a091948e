"""Build the optional compiled parts; everything else is in pyproject.toml.

Both compiled parts are optional: on a machine without a compiler the install still
succeeds and kadeploy runs on the pure-Python relay backends. Extension(optional=True)
is passed to setup() as is: cythonize() would silently drop the optional flag, and
setuptools compiles .pyx sources itself when Cython is installed.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kadeploy._relay",
            sources=["kadeploy/_relay.pyx"],
            include_dirs=["kadeploy/includes"],
            optional=True,
        )
    ],
    cffi_modules=["buildutils/build_cffi.py:ffibuilder"],
)
