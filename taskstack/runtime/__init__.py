"""The runtime: reach a run's nodes, run the task on them, stream logs, forward ports.

It owns the two transports (local processes and SSH), the working-directory snapshot that
is shipped to every node, the `docker run` command line built from a task, the system
variables, log streaming and port forwarding. It does not know which engine made the nodes.
"""
