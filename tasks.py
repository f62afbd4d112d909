"""invoke entry point: wires the task collections in `ops.tasks`; all logic lives in `ops`.

Every task appears once in `invoke --list`: the six a user types every day at the root (each module's
`ROOT_TASKS`: up, down, test, serve, smoke, deploy), everything else in its area's namespace."""

from invoke import Collection

from ops.tasks import bench, cluster, dev, images, infra, local, manifests, models, serve, tools

ns = Collection()
for module in (local, dev, models, serve, images, manifests, tools, cluster, infra, bench):
    if module.ns.tasks or module.ns.collections:
        ns.add_collection(module.ns)
    for task in getattr(module, "ROOT_TASKS", ()):
        ns.add_task(task)
