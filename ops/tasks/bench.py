"""invoke tasks for the bench area (being built)."""

from invoke import Collection

ns = Collection("bench")
ROOT_TASKS: list = []
