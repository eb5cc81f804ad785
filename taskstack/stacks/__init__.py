"""Stacks: turn a `ClusterPlan` into real infrastructure and drive an engine.

It owns the per-cloud Pulumi programs (`programs/`), the offline preview under the Pulumi
SDK's mocks (`preview`), the Pulumi Automation API engine (`pulumi_engine`), the Terraform
engine (`terraform`), and engine settings (`settings`). Every resource carries the run
name in its tags. Nothing here reaches a node over SSH.
"""
