"""The compiled parts: the partition stage's scan (hashindex/serving/candidates/fastscan.c) and
the compact rerank store's scoring (hashindex/serving/compact_scan.c) and its float rows read from
the index file (hashindex/serving/file_rows.c).

Optional: where they cannot be compiled (no C compiler; the scan also needs x86-64), the install
still succeeds and searches use FAISS's scan and scanner instead (hashindex/serving/native.py).
Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hashindex.serving.candidates._fastscan",
            sources=["hashindex/serving/candidates/fastscan.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "hashindex.serving._file_rows",
            sources=["hashindex/serving/file_rows.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "hashindex.serving._compact_scan",
            sources=["hashindex/serving/compact_scan.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
