"""Make the registry's torchvision 0.28.0 (a CUDA build) importable next to CPU torch.

Why: ``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, but with CPU torch the CUDA build's C++ ops never load,
so ``import torchvision`` dies with ``RuntimeError: operator torchvision::nms does not exist``.
Every other registration in that file is already guarded by ``extension._has_ops()``.

This script applies the same guard to those two decorators::

    @torch.library.register_fake("torchvision::nms")
 -> @(torch.library.register_fake("torchvision::nms") if torchvision.extension._has_ops() else (lambda f: f))

Only the (unavailable) C++ ops stay missing; transforms and io work. The original file is kept as
``_meta_registrations.py.swiftpack-orig`` and ``revert`` restores it byte for byte. A GPU install
(where the ops load) never needs this; ``make install`` applies it only when torch has no CUDA.

Usage: python scripts/torchvision_cpu_guard.py apply|revert|status
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

OPS = ("torchvision::nms", "torchvision::qnms")
BACKUP_SUFFIX = ".swiftpack-orig"


def _target() -> pathlib.Path:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchvision is not installed in this environment")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "_meta_registrations.py"


def guarded(source: str) -> str:
    """Return ``source`` with the unconditional nms/qnms fake registrations guarded."""
    for op in OPS:
        plain = f'@torch.library.register_fake("{op}")'
        guard = (f'@(torch.library.register_fake("{op}") '
                 f'if torchvision.extension._has_ops() else (lambda f: f))')
        if guard not in source:
            if plain not in source:
                raise SystemExit(f"unexpected torchvision source: {plain!r} not found; not patching")
            source = source.replace(plain, guard)
    return source


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in {"apply", "revert", "status"}:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    target = _target()
    backup = target.with_name(target.name + BACKUP_SUFFIX)
    action = argv[0]
    if action == "status":
        print(f"{target}: {'guarded' if backup.exists() else 'original'}")
        return 0
    if action == "revert":
        if backup.exists():
            target.write_bytes(backup.read_bytes())
            backup.unlink()
            print(f"restored {target}")
        else:
            print(f"{target}: nothing to revert")
        return 0
    original = target.read_text()
    patched = guarded(original)
    if patched == original:
        print(f"{target}: already guarded")
        return 0
    if not backup.exists():
        backup.write_text(original)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(patched)
    tmp.replace(target)
    print(f"guarded {target} (backup: {backup.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
