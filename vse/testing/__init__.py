"""Fixtures shared by the tests and the benchmarks (``benchmarks/`` never imports ``tests/``).

- ``shapes``: a tiny synthetic dataset of coloured shapes with captions and tags.
- ``hostile``: the corpus of bad and hostile inputs, each with what must happen to it.
- ``app_runner``: the app of a source checkout, started on a free loopback port.
- ``vote_writer``: a process that stores votes until it is killed (durability checks).
"""
