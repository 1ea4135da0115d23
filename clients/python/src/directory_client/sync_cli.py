"""`directory-sync`: push a portal's ads from a JSON Lines or CSV file to the directory.

    export DIRECTORY_PORTAL_KEY=cdir_...        # never on the command line
    directory-sync ads.csv --directory https://directory.example.org

Incremental by default: only what changed since the last successful run is sent, and ads
that left the file are deleted (the state file, `ADS.sync-state` beside the input, says
what earlier runs pushed). `--replace` makes the file the portal's complete set,
atomically. Killed half way, it resumes where it stopped when run again.

Exit status: 0 done, 1 done but some rows were rejected (see the report), 2 bad usage (a
key or URL that cannot be sent, too), an input or state file that cannot be read, a state
or report file that cannot be written, or another run using the state file (nothing was
sent), 3 the run was cut short: the
directory could not be reached or refused the run, or the state or report file could not
be written once it had begun (run again to resume)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from directory_client import __version__
from directory_client.client import DirectoryClient
from directory_client.errors import (
    ApiError,
    ClientMisconfigured,
    DirectoryError,
    Forbidden,
    Unauthenticated,
)
from directory_client.sync import (
    DEFAULT_CONCURRENCY,
    MAX_BATCH_SIZE,
    TOO_MANY_ADS,
    SyncError,
    SyncReport,
    sync_file,
)
from directory_client.sync_input import LIST_SEPARATOR, InputError
from directory_client.sync_progress import for_stream
from directory_client.sync_state import StateError, StateWriteError

KEY_VARIABLE = "DIRECTORY_PORTAL_KEY"
DIRECTORY_VARIABLE = "DIRECTORY_URL"
EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_DIRECTORY = 0, 1, 2, 3
# The directory's refusal to open one more sync session for the portal (409).
TOO_MANY_SYNC_SESSIONS = "too_many_sync_sessions"
REJECTIONS_SHOWN = 20  # in the printed summary; the report file has them all
TIMEOUT_S = 120.0  # a batch of 1,000 ads on a busy directory takes seconds, not minutes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="directory-sync",
        description="Push a portal's ads from a JSON Lines or CSV file to the Commons "
        f"Directory, with the portal's key in ${KEY_VARIABLE}.",
        epilog=f"CSV: a header line; nested fields as dotted columns (location.lat, "
        f"price.amount); lists in one cell separated by {LIST_SEPARATOR!r}; an empty cell "
        "leaves the field out.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("input", type=Path, help="the ads: a .jsonl, .ndjson or .csv file")
    parser.add_argument(
        "--directory",
        default=os.environ.get(DIRECTORY_VARIABLE),
        help=f"the directory's base URL (default ${DIRECTORY_VARIABLE})",
    )
    parser.add_argument(
        "--state", type=Path, help="the state file (default: INPUT.sync-state beside the input)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        help="where to write the JSON report (default: INPUT.sync-report.json)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="make the file the portal's complete set of ads, atomically (a sync session)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would change; change nothing"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=MAX_BATCH_SIZE,
        help=f"ads per request, 1 to {MAX_BATCH_SIZE} (default {MAX_BATCH_SIZE})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    return parser


def main(
    argv: Sequence[str] | None = None, *, client_class: type[DirectoryClient] = DirectoryClient
) -> int:
    """The command; `client_class` makes its client (the tests' may fail as a real one can)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    key = os.environ.get(KEY_VARIABLE)
    if not args.directory:
        parser.error(f"--directory (or ${DIRECTORY_VARIABLE}) is required")
    if not key:
        parser.error(f"the portal's key is read from ${KEY_VARIABLE}, which is not set")
    state_path = args.state or args.input.with_name(args.input.name + ".sync-state")
    report_path = args.report or args.input.with_name(args.input.name + ".sync-report.json")
    progress = for_stream(sys.stderr)
    try:
        check_writable(report_path)
    except OSError as error:
        print(
            f"directory-sync: cannot write the report file {report_path}: "
            f"{error.strerror or error}; nothing was sent",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        with client_class(args.directory, key=key, timeout_s=TIMEOUT_S) as client:
            report = sync_file(
                client,
                args.input,
                state_path=state_path,
                replace=args.replace,
                dry_run=args.dry_run,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                progress=progress,
            )
    except ClientMisconfigured as error:
        # The key or URL cannot be sent at all: running again changes nothing. (The
        # message never shows the key.)
        print(f"directory-sync: {error}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    except StateWriteError as error:
        progress.finish()
        print(
            f"directory-sync: {error}\nThe run stopped there: what the directory answered "
            "before is recorded. Run the same command again once the state file can be "
            "written, to resume.",
            file=sys.stderr,
        )
        return EXIT_DIRECTORY
    except (InputError, StateError, SyncError) as error:
        progress.finish()
        print(f"directory-sync: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DirectoryError as error:
        progress.finish()
        if isinstance(error, ApiError) and error.code == TOO_MANY_SYNC_SESSIONS:
            # Running again at once would be refused alike.
            print(
                f"directory-sync: {error}\nThe portal has as many sync sessions open as "
                "the directory allows (other runs, with other state files, or other "
                "programs may be resyncing it); nothing was staged. Run the same command "
                "again once one is committed, aborted or expired.",
                file=sys.stderr,
            )
            return EXIT_DIRECTORY
        if isinstance(error, ApiError) and error.code == TOO_MANY_ADS:
            # Running again unchanged would be refused alike.
            print(
                f"directory-sync: {error}\nThe resync would leave the portal more ads than "
                "the directory lets it store; nothing of it was published. Take ads out of "
                "the file, or ask the directory's operators for a higher limit, then run "
                "again.",
                file=sys.stderr,
            )
            return EXIT_DIRECTORY
        if isinstance(error, Unauthenticated | Forbidden):
            # Running again with the same key would be refused alike. (The directory's
            # message never shows the key.)
            what = (
                f"the directory refused the portal's key (${KEY_VARIABLE}): mistyped, "
                "revoked, or of another directory"
                if isinstance(error, Unauthenticated)
                else "the directory refused the portal: ask the directory's operators why "
                "(a suspended portal can do nothing until it is reactivated)"
            )
            print(
                f"directory-sync: {error}\nThe run stopped: {what}. Running the same command "
                "again would be refused alike; what the directory answered before is "
                "recorded, and a run with a key it takes resumes from there.",
                file=sys.stderr,
            )
            return EXIT_DIRECTORY
        detail = ""
        if isinstance(error, ApiError) and error.field_errors:
            detail = f" {error.field_errors}"
        print(
            f"directory-sync: {error}{detail}\nNothing that was answered is lost: "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return EXIT_DIRECTORY
    try:
        report_path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    except OSError as error:
        print_summary(report, sys.stdout, report_path=None)
        print(
            f"directory-sync: cannot write the report file {report_path}: "
            f"{error.strerror or error}. The sync itself is done: the summary above is "
            "what the report would have said.",
            file=sys.stderr,
        )
        return EXIT_DIRECTORY
    print_summary(report, sys.stdout, report_path=report_path)
    return EXIT_OK if report.ok else EXIT_REJECTED


def check_writable(path: Path) -> None:
    """Raise the OSError that writing `path` would meet (a folder that does not exist, a
    folder in its place, no permission) now, before anything is sent. Nothing is made or
    changed: another run may be about to write the same report."""
    if path.exists():
        with path.open("ab"):  # a folder raises IsADirectoryError; no permission, its error
            return
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder))
    if not os.access(folder, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def print_summary(report: SyncReport, out: TextIO, *, report_path: Path | None) -> None:
    if report.dry_run:
        print(f"dry run ({report.mode}): nothing was changed", file=out)
        for label, keys in (
            ("would create", report.would_create),
            (
                "would update"
                if report.mode == "incremental"
                else "would send again (update or keep)",
                report.would_update,
            ),
            ("would renew (unchanged, sent again lest they end)", report.would_renew),
            ("would delete", report.would_delete),
        ):
            print(f"{label}: {len(keys):,}", file=out)
            for key in keys:
                print(f"  {key}", file=out)
        if report.mode == "incremental":
            print(f"unchanged: {report.unchanged:,}", file=out)
    else:
        rate = report.sent / report.elapsed_s if report.elapsed_s else 0.0
        print(
            f"{report.mode} sync of {report.rows:,} rows in {report.elapsed_s:.1f} s "
            f"({report.sent:,} ads sent, {rate:,.0f} ads/s)"
            + (", resumed an interrupted run" if report.resumed else ""),
            file=out,
        )
        print(
            f"created {report.created:,}, updated {report.updated:,}, "
            f"renewed {report.renewed:,}, unchanged {report.unchanged:,}, "
            f"deleted {report.deleted:,}, rejected {len(report.rejected):,}",
            file=out,
        )
    if report.deletes_held_back:
        print(
            f"deletes held back: {len(report.deletes_held_back):,} (rows without a readable "
            "external_id might be those ads: fix them, then run again)",
            file=out,
        )
    if report.left_alone:
        print(
            f"left alone: {report.left_alone:,} of the portal's ads in the directory are not "
            "in the input, and the state file records none pushed by an earlier run. If "
            "one did, with another state file, run with its --state (use the same one every "
            "run); --replace makes the input the portal's complete set.",
            file=out,
        )
    rejected = sorted(report.rejected, key=lambda rejection: rejection.line)
    if rejected:
        print(f"rejected: {len(rejected):,}", file=out)
    for rejection in rejected[:REJECTIONS_SHOWN]:
        print(f"  line {rejection.line} ({rejection.external_id or 'no external_id'}): "
              f"{rejection.reason}", file=out)  # fmt: skip
    if len(rejected) > REJECTIONS_SHOWN:
        print(f"  ... and {len(rejected) - REJECTIONS_SHOWN:,} more", file=out)
    if over_the_limit := report.over_the_limit:
        print(
            f"not created, the portal storing as many ads as the directory lets it "
            f"({TOO_MANY_ADS}): {len(over_the_limit):,}. Delete ads it no longer needs, or ask "
            "the directory's operators for a higher limit; the next run sends them again.",
            file=out,
        )
    if report_path is not None:
        print(f"report: {report_path}", file=out)


if __name__ == "__main__":
    sys.exit(main())
