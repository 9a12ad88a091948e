"""Build the optional compiled relay; everything else is in pyproject.toml.

The compiled part is optional: on a machine without a compiler the install still
succeeds and kadeploy runs on the pure-Python relay backends. Extension(optional=True)
is passed to setup() as is: cythonize() would silently drop the optional flag, and
setuptools compiles .pyx sources itself when Cython is installed.
"""
from setuptools import Extension, setup


setup(
    ext_modules=[
        Extension(
            "kadeploy.relay._relay",
            sources=["kadeploy/relay/_relay.pyx"],
            include_dirs=["kadeploy/relay/includes"],
            optional=True,
        )
    ],
    # Installed by pip under <prefix>/share/man/man1, where man(1) finds them.
    data_files=[("share/man/man1", ["man/ka-d-server.1", "man/ka-d-client.1", "man/kadeploy.1",
                                   "man/kadeploy-push.1"])],
)
