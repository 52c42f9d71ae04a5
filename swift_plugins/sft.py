"""Entry point: ``python -m swift_plugins.sft --config FILE [--section.key value ...]``.

Multi-GPU: ``torchrun --nproc_per_node=4 -m swift_plugins.sft --config configs/dlora/sft_text_only.yaml``
(torchrun starts the processes; this module never starts torchrun itself). Flags::

    --config FILE           YAML config (paths inside are relative to the working directory)
    --section.key VALUE     override any key, e.g. --training.learning_rate 1e-4 --model.model DIR
    --print_config          print the resolved config with each value's source; exit 0 / 2
    --export_flat OUT.yaml  write a flat YAML for plain `swift sft OUT.yaml` (+ sidecar + plugin)
    --world_size N          world size for --print_config / --export_flat previews

Config problems, a missing file and launcher mistakes are reported (all at once, one ``error:``
line each) before torch or ms-swift are imported; exit status 2. So is a packed checkpoint
resumed with another world size. A bad record found while planning is reported the same way. The run itself is
:func:`swift_plugins.training.pipeline.run_resolved`.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import List, Mapping, Optional, Sequence

from swift_plugins.config import (CLI_FLAGS, ConfigError, Issue, ResolvedConfig, export_flat, missing_paths,
                                  parse_cli, render_config, resolve_config, resolve_world_size, world_size_from_env)
from swift_plugins.config.preflight import preview_issues, run_issues
from swift_plugins.config.zero import cpu_deepspeed_issues
from swift_plugins.errors import run_main
from swift_plugins.packing.resume import check_resume_world_size

__all__ = ["launch_issues", "main"]

USAGE = ("usage: python -m swift_plugins.sft --config FILE [--print_config] [--export_flat OUT.yaml] "
         "[--world_size N] [--section.key VALUE ...]\n"
         "       torchrun --nproc_per_node=N -m swift_plugins.sft --config FILE [...]\n\n"
         + "\n".join(f"  {flag:<15} {text}" for flag, text in CLI_FLAGS.items())
         + "\n  --section.key   any config key, e.g. --training.learning_rate 1e-4 (docs/configuration.md)\n")


def launch_issues(environ: Mapping[str, str], world_size_flag: Optional[int]) -> List[Issue]:
    """Launcher mistakes for a real run (not previews).

    - ``NPROC_PER_NODE`` is ms-swift's switch to re-launch itself under torchrun: inside a torchrun
      rank it would start torchrun again per rank, and without torchrun it would be ignored here.
    - ``--world_size`` is for previews; a run's world size is torchrun's ``WORLD_SIZE``.
    """
    issues = []
    under_torchrun = "LOCAL_RANK" in environ or "TORCHELASTIC_RUN_ID" in environ
    if "NPROC_PER_NODE" in environ:
        if under_torchrun:
            issues.append(Issue("environment", "NPROC_PER_NODE",
                                f"is set ({environ['NPROC_PER_NODE']}) inside a torchrun rank; unset it (torchrun's "
                                f"--nproc_per_node already started the processes; NPROC_PER_NODE would make ms-swift "
                                f"start torchrun again in every rank)"))
        else:
            issues.append(Issue("environment", "NPROC_PER_NODE",
                                f"is set ({environ['NPROC_PER_NODE']}) but python -m swift_plugins.sft does not start "
                                f"processes; unset it and launch with torchrun --nproc_per_node="
                                f"{environ['NPROC_PER_NODE']} -m swift_plugins.sft ..."))
    actual = world_size_from_env(environ)
    if world_size_flag is not None and world_size_flag != actual:
        issues.append(Issue("command line", "--world_size",
                            f"{world_size_flag} does not match this run's world size {actual} (torchrun's WORLD_SIZE); "
                            f"--world_size is for --print_config / --export_flat previews, drop it or launch with "
                            f"torchrun --nproc_per_node={world_size_flag}"))
    return issues


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cli = parse_cli(argv)
    world_size, world_size_source = resolve_world_size(cli.world_size, os.environ)
    resolved: ResolvedConfig = resolve_config(cli.config, cli.overrides, world_size=world_size,
                                              world_size_source=world_size_source)
    # a preview that passes must not fail at launch; what DeepSpeed on the CPU cannot do, before anything is written
    issues = preview_issues(os.environ, cli.export_flat) + cpu_deepspeed_issues(resolved)
    if issues:
        raise ConfigError(issues)
    if cli.print_config:
        print(render_config(resolved), end="")
    if cli.export_flat:
        files = export_flat(resolved, cli.export_flat, display_path=cli.export_flat,
                            command="python -m swift_plugins.sft " + " ".join(map(shlex.quote, argv)))
        print(f"wrote {files.flat_yaml}\n      {files.sidecar_json}\n      {files.plugin_py}")
    if cli.print_config or cli.export_flat:
        return 0
    issues = launch_issues(os.environ, cli.world_size) + missing_paths(resolved)
    issues += run_issues(resolved) if not issues else []  # what the paths hold, once they exist
    if issues:
        raise ConfigError(issues)
    training = resolved.config.training
    if training.packing and training.resume_from_checkpoint:  # before the slow imports: a wrong launch fails fast
        check_resume_world_size(training.resume_from_checkpoint, world_size_from_env(os.environ))
    from swift_plugins.training.pipeline import device_issues, run_resolved  # torch + ms-swift from here on

    issues = device_issues(resolved, os.environ)
    if issues:
        raise ConfigError(issues)
    run_resolved(resolved)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; user errors are ``error:`` lines on stderr and exit status 2."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
