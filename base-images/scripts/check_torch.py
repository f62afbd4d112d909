"""Build-time check of a torch base image: versions agree, torchvision's ops load, CUDA kernels cover the target GPUs.

Runs inside the image during `docker build` (no GPU there), so the CUDA arch list is read from the compiled
flags (`torch._C._cuda_getArchFlags()`), not from `torch.cuda.get_arch_list()`, which is empty without a GPU.
Standalone on purpose (stdlib + torch only): tests import `arch_covered` from this file too.
"""

from __future__ import annotations

import argparse
import re
import sys


def parse_arch(arch: str) -> tuple[str, int, int]:
    """'sm_86' -> ('sm', 8, 6); 'compute_90' -> ('compute', 9, 0); 'sm_90a' -> ('sm', 9, 0)."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[af]?", arch.strip())
    if not m:
        raise ValueError(f"not a CUDA arch: {arch!r}")
    return m.group(1), int(m.group(2)), int(m.group(3))


def arch_covered(target: str, compiled: list[str]) -> bool:
    """Whether kernels compiled for `compiled` run on a GPU of arch `target`.

    SASS (sm_XY) runs on the same major with an equal or higher minor (sm_86 runs on sm_89);
    PTX (compute_XY) is JIT-compiled for any equal or newer arch.
    """
    _, t_major, t_minor = parse_arch(target)
    for arch in compiled:
        kind, major, minor = parse_arch(arch)
        if kind == "sm" and major == t_major and minor <= t_minor:
            return True
        if kind == "compute" and (major, minor) <= (t_major, t_minor):
            return True
    return False


def local_tag(version: str) -> str:
    return version.partition("+")[2]


def public(version: str) -> str:
    return version.partition("+")[0]


def check(args: argparse.Namespace) -> list[str]:
    import torch
    import torchvision
    from torchvision.ops import nms

    errors: list[str] = []
    if public(torch.__version__) != args.torch:
        errors.append(f"torch is {torch.__version__}, the matrix says {args.torch}")
    if public(torchvision.__version__) != args.torchvision:
        errors.append(f"torchvision is {torchvision.__version__}, the matrix says {args.torchvision}")
    if local_tag(torch.__version__) != local_tag(torchvision.__version__):
        errors.append(f"torch {torch.__version__} and torchvision {torchvision.__version__} are different builds")
    if args.variant and local_tag(torch.__version__) != args.variant:
        errors.append(f"torch wheel variant is {local_tag(torch.__version__)!r}, expected {args.variant!r}")
    tv_cuda = getattr(torchvision.version, "cuda", None)
    if (torch.version.cuda is None) != (tv_cuda is None):
        errors.append(f"torch CUDA {torch.version.cuda} vs torchvision CUDA {tv_cuda}")
    # torchvision's compiled ops must load against this torch (an ABI mismatch fails here, not in production).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    if kept != [0, 2]:
        errors.append(f"torchvision.ops.nms returned {kept}, expected [0, 2]")
    if args.cuda:
        if torch.version.cuda != args.cuda:
            errors.append(f"torch is built for CUDA {torch.version.cuda}, the matrix says {args.cuda}")
        compiled = (torch._C._cuda_getArchFlags() or "").split()
        missing = [a for a in args.archs.split() if not arch_covered(a, compiled)]
        if missing:
            errors.append(f"no CUDA kernels for target archs {missing}; torch was compiled for {compiled}")
        print(f"torch CUDA arch list: {' '.join(compiled)}; targets {args.archs} covered" if not missing else "")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", required=True, help="Expected torch version (public part).")
    parser.add_argument("--torchvision", required=True, help="Expected torchvision version (public part).")
    parser.add_argument("--variant", default="", help="Expected local version tag, e.g. cu132; empty skips.")
    parser.add_argument("--cuda", default="", help="Expected torch.version.cuda; empty skips the CUDA checks.")
    parser.add_argument("--archs", default="", help="Space-separated target archs, e.g. 'sm_75 sm_86'.")
    args = parser.parse_args(argv)
    errors = check(args)
    for err in errors:
        print(f"check_torch: FAIL: {err}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
