"""invoke tasks for the tools area (being built)."""

from invoke import Collection

ns = Collection("tools")
ROOT_TASKS: list = []
