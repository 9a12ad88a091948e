"""Build the optional compiled parts; everything else is in pyproject.toml.

Both compiled parts are optional: on a machine without a compiler the install still
succeeds and kadeploy runs on the pure-Python relay backends. Extension(optional=True)
is passed to setup() as is: cythonize() would silently drop the optional flag, and
setuptools compiles .pyx sources itself when Cython is installed. cffi_modules has no
optional flag, so it is only asked for when a test compile against Python.h works.
"""
import os
import sysconfig
import tempfile

from setuptools import Extension, setup


def can_compile_extensions() -> bool:
    from distutils.ccompiler import new_compiler  # setuptools' copy once it is imported
    from distutils.sysconfig import customize_compiler

    try:
        cc = new_compiler()
        customize_compiler(cc)
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("#include <Python.h>\nint kadeploy_probe(void) { return 0; }\n")
            cc.compile([src], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]])
        return True
    except Exception:  # no compiler, no Python headers, ...: skip the cffi part
        return False


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
    data_files=[("share/man/man1", ["man/ka-d-server.1", "man/ka-d-client.1", "man/kadeploy.1"]),
                ("share/man/man5", ["man/kadeploy-manifest.5"])],
    cffi_modules=["buildutils/build_cffi.py:ffibuilder"] if can_compile_extensions() else [],
)
