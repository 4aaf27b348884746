"""The one compiled part: the partition stage's scan (hashindex/serving/candidates/fastscan.c).

Optional: where it cannot be compiled (no C compiler, not x86-64), the install still succeeds
and searches use FAISS's scan instead (hashindex/serving/candidates/fastscan.py). Everything
else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hashindex.serving.candidates._fastscan",
            sources=["hashindex/serving/candidates/fastscan.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
