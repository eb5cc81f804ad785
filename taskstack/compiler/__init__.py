"""The compiler: task configs, offers and the cluster plan.

It owns the meaning of a `.dstack.yml` task (`config`, `resources`), the offers catalog
and the matching of a task's requirements against it (`catalog`, `offers`), and the
engine-neutral `ClusterPlan` that a run compiles to (`plan`). Nothing here talks to a
cloud, an engine or a host.
"""
