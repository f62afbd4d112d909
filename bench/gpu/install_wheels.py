"""Install a folder of wheels into a target directory without pip or network: pick the best-matching wheel per project.

Runs on the GPU machine before anything else is available, so it needs only the standard library and `packaging`
(which pytest brings). Console scripts are not created; everything is imported from the target via PYTHONPATH.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename


def choose(wheels: list[Path]) -> dict[str, Path]:
    """For each project, the wheel whose tags rank best for this interpreter; projects with no match are left out."""
    ranking = {tag: index for index, tag in enumerate(sys_tags())}
    best: dict[str, tuple[int, Path]] = {}
    for wheel in wheels:
        name, _version, _build, tags = parse_wheel_filename(wheel.name)
        rank = min((ranking[t] for t in tags if t in ranking), default=None)
        if rank is None:
            continue
        project = canonicalize_name(name)
        if project not in best or rank < best[project][0]:
            best[project] = (rank, wheel)
    return {project: path for project, (_rank, path) in sorted(best.items())}


def install(folder: Path, target: Path, required: list[str]) -> dict[str, Path]:
    """Unpack the chosen wheels into `target`; fail when a required project has no compatible wheel."""
    chosen = choose(sorted(folder.glob("*.whl")))
    missing = [r for r in required if canonicalize_name(r) not in chosen]
    if missing:
        raise SystemExit(f"no wheel for this interpreter ({sys.version.split()[0]}) in {folder}: {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    for wheel in chosen.values():
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise SystemExit(f"{wheel.name}: unsafe path {member}")
            archive.extractall(target)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wheels", type=Path, help="Folder of .whl files (from `invoke bench.wheels`).")
    parser.add_argument(
        "target",
        type=Path,
        help="Directory to unpack into; put it first on PYTHONPATH.",
    )
    parser.add_argument(
        "--requirements",
        type=Path,
        help="requirements.txt whose every name must be installable.",
    )
    args = parser.parse_args()
    required = []
    if args.requirements and args.requirements.is_file():
        required = [line.split("==")[0].strip() for line in args.requirements.read_text().splitlines() if "==" in line]
    for project, wheel in install(args.wheels, args.target, required).items():
        sys.stdout.write(f"installed {project}: {wheel.name}\n")


if __name__ == "__main__":
    main()
