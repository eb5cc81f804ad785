"""The command line: typer commands that parse arguments, call one function, render it.

Only this package talks to the person: rich tables and live progress on stdout, our
errors as one red line on stderr. It holds no provisioning or SSH logic.
"""
