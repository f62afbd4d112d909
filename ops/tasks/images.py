"""invoke tasks for the images area (being built)."""

from invoke import Collection

ns = Collection("images")
ROOT_TASKS: list = []
