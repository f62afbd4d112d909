"""invoke tasks for the cluster area (being built)."""

from invoke import Collection

ns = Collection("cluster")
ROOT_TASKS: list = []
