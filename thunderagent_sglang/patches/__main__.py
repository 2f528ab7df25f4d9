"""``python -m thunderagent_sglang.patches apply|check|revert|list``.

Exit status: 0 success (check: all patches applied), 1 check found patches
not applied, 2 a user error (wrong or missing SGLang, bad manifest, conflict).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thunderagent_sglang import PINNED_SGLANG_VERSION

from . import (
    PatchError,
    apply_patches,
    check_patches,
    check_sglang_version,
    default_patches_dir,
    load_manifest,
    resolve_site_packages,
    revert_patches,
)

COMMANDS = {
    "apply": "apply the patches not yet applied (idempotent; all or nothing)",
    "check": "print each patch's state; exit 0 only when all are applied",
    "revert": "revert the applied patches in reverse order (idempotent)",
    "list": "print the manifest: each patch, what it changes and why no hook could",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m thunderagent_sglang.patches",
        description=f"Manage the ThunderAgent source patches for SGLang {PINNED_SGLANG_VERSION}.",
        epilog="\n".join(f"  {name:7} {text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, help="what to do")
    parser.add_argument("--site-packages", type=Path, help="directory holding the sglang package (default: detected)")
    parser.add_argument("--patches-dir", type=Path, help="patch directory (default: patches/sglang-<pinned>/)")
    parser.add_argument("--sglang-version", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    patches_dir = args.patches_dir or default_patches_dir()
    if args.command == "list":
        return show(load_manifest(patches_dir))
    check_sglang_version(args.sglang_version, site_packages=args.site_packages)
    entries = load_manifest(patches_dir)
    if not entries:
        print(f"no source patches for SGLang {PINNED_SGLANG_VERSION}; nothing to {args.command}")
        return 0
    site = resolve_site_packages(args.site_packages)
    if args.command == "check":
        return report_check(check_patches(entries, site))
    {"apply": apply_patches, "revert": revert_patches}[args.command](entries, site)
    return 0


def report_check(all_applied: bool) -> int:
    if all_applied:
        return 0
    print("some patches are not applied: run `python -m thunderagent_sglang.patches apply`")
    return 1


def show(entries) -> int:
    if not entries:
        print(f"no source patches for SGLang {PINNED_SGLANG_VERSION}")
    for entry in entries:
        print(entry.file)
        print(f"  changes:      {entry.changes}")
        print(f"  why_no_hook:  {entry.why_no_hook}")
        print(f"  inert_unless: {entry.inert_unless}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
