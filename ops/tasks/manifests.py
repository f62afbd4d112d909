"""invoke tasks for the manifests area (being built)."""

from invoke import Collection

ns = Collection("manifests")
ROOT_TASKS: list = []
