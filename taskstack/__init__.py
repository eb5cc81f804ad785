"""taskstack: run dstack-style tasks on clouds by compiling each run into an IaC stack."""

__version__ = "0.1.0"
