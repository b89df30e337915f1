"""The one compiled part of virtkit: the container runtime's system calls (virtkit/container/_linux.c).
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("virtkit.container._linux", ["virtkit/container/_linux.c"],
                             extra_compile_args=["-O2", "-Wall", "-Werror"])])
