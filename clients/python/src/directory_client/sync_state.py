"""The state file of `directory-sync`: what the directory holds of a portal's ads, as far
as earlier runs know, so that a run sends only what changed and a killed run resumes.

It is a JSON Lines log. The first line is a snapshot:

    {"format": "directory-sync/1", "directory": URL, "portal": slug, "finished": bool,
     "ads": {external_id: digest, ...}, "session": null | {"id": ..., "staged": {...}},
     "written": {external_id: seconds, ...}, "lifetime_s": seconds | null}

`written` says when the directory last set an ad's expiry (created or changed it, or
renewed it), in seconds since the epoch, as far as runs know: an ad it leaves out is due
for a look (`directory_client.sync` renews ads before they expire). `lifetime_s` is the
shortest lifetime the directory gave the portal's ads at the last look. State files
written before these two existed lack them: every ad is then due for a look, the safe
side, since the ads of such a file may be near their end or past it.

Each later line records one step, appended and flushed as it happens (a step is cheap to
write, where rewriting 100,000 digests after every batch would cost more than the batch):

    {"sending": n, "ids": [...]}          batch n is about to be sent or staged
    {"synced": n, "ads": {id: digest | null}, "written": {id: seconds}}
                                          batch n's answer: accepted, or deleted (null);
                                          those the directory wrote, and when
    {"looked": {id: seconds}, "lifetime_s": seconds | null}
                                          a look at the directory: when it last wrote ads
                                          not due for renewal yet, and their lifetime
    {"session": id}                       a sync session (--replace) was opened
    {"staged": {id: digest | ""}, "batch": n}   batch n's answer: ads staged in the session
                                          ("" rejected: kept as it was)
    {"committed": id, "unknown": [...], "written": {id: seconds}}
                                          it was committed: the staged ads are the set
    {"closed": id}                        it was aborted or found expired

Replaying the log gives the state. An ad of a batch that was sent but never answered
(the run was killed) may or may not have reached the directory: its digest becomes
UNKNOWN, so the next run sends it again (or deletes it), which is harmless because upserts
and deletes by external id are idempotent; in a sync session it becomes UNKNOWN among the
staged ads, so that one no longer in the input makes the session stale. The state is never
ahead of the directory: a step is recorded only after the directory answered. At the start
and the end of a run the log is rewritten as one snapshot (temporary file, fsync, rename);
`finished` says whether the run that wrote it came to its end.

One run at a time uses a state file: `locked` holds `STATE.lock` beside it for the whole run
(two runs interleaving their steps, or one replacing the file while the other appends to
it, would each record what the other undid)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

STATE_FORMAT = "directory-sync/1"
UNKNOWN = ""  # the directory may hold some version of this ad, or none
LOCK_SUFFIX = ".lock"


class StateError(Exception):
    """The state file cannot be used (corrupt, kept for another directory or portal, in
    use by another run, or not writable): nothing was sent."""


class StateWriteError(StateError):
    """The state file could not be written during a run, which stopped there: what it
    recorded before stands, and a batch whose answer it could not record is sent again
    by the next run."""


@contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Lock the state file `path` for a run: exclusively for a run that writes it, shared
    for a dry run that only reads it. Never waits: a run that finds it held stops before
    sending anything. The lock is on `path` + LOCK_SUFFIX, a file left in place (deleting
    it would let a third run lock a fresh file while the second holds the old one); the
    system releases it when the process ends, however it ends."""
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    try:
        file = lock_path.open("ab")
    except OSError as error:
        raise StateError(
            f"cannot create the lock file {lock_path} beside the state file: "
            f"{error.strerror}; nothing was sent"
        ) from error
    with file:
        try:
            fcntl.flock(file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another directory-sync run is using {path} (it holds {lock_path}); "
                "nothing was sent"
            ) from None
        except OSError as error:
            raise StateError(
                f"cannot lock {lock_path}: {_reason(error)}; nothing was sent"
            ) from None
        yield


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


@dataclass
class OpenSession:
    id: str
    staged: dict[str, str] = field(default_factory=dict)


@dataclass
class SyncState:
    directory: str
    portal: str
    ads: dict[str, str] = field(default_factory=dict)
    session: OpenSession | None = None
    pending: dict[int, list[str]] = field(default_factory=dict)
    finished: bool = True  # False while a run is under way, and after one was cut short
    written: dict[str, int] = field(default_factory=dict)  # see the module's docstring
    lifetime_s: int | None = None

    def apply(self, record: dict[str, Any]) -> None:
        """One step of the log (see the module's docstring)."""
        if "sending" in record:
            self.pending[record["sending"]] = record["ids"]
        elif "synced" in record:
            self.pending.pop(record["synced"], None)
            for external_id, digest in record["ads"].items():
                if digest is None:
                    self.ads.pop(external_id, None)
                    self.written.pop(external_id, None)
                else:
                    self.ads[external_id] = digest
            self.written.update(record.get("written", {}))  # none in older logs
        elif "looked" in record:
            self.written.update(record["looked"])
            if record["lifetime_s"] is not None:
                self.lifetime_s = record["lifetime_s"]
        elif "session" in record:
            self.session = OpenSession(record["session"])
        elif "staged" in record:
            self.pending.pop(record.get("batch"), None)  # no batch in older logs
            self._open_session(record).staged.update(record["staged"])
        elif "committed" in record:
            before = self.ads
            self.ads = dict(self._open_session(record).staged)
            self.ads.update(dict.fromkeys(record["unknown"], UNKNOWN))
            # An ad the commit may have written, and not said so, is due for a look.
            self.written = {
                external_id: written
                for external_id, written in self.written.items()
                if self.ads.get(external_id, UNKNOWN) != UNKNOWN
                and self.ads[external_id] == before.get(external_id)
            }
            self.written.update(record.get("written", {}))  # none in older logs
            self.session = None
        elif "closed" in record:
            self.session = None
        else:
            raise StateError(f"unknown step {sorted(record)}")

    def settle_pending(self) -> None:
        """Batches sent and never answered: their ads' fate is unknown, in the directory
        or, while a session is open (the batches were staged), among its staged ads."""
        fates = self.ads if self.session is None else self.session.staged
        for ids in self.pending.values():
            fates.update(dict.fromkeys(ids, UNKNOWN))
        self.pending.clear()

    def _open_session(self, record: dict[str, Any]) -> OpenSession:
        if self.session is None:
            raise StateError(f"{sorted(record)[0]} without an open session")
        return self.session


def load_state(path: Path, *, directory: str, portal: str) -> SyncState:
    """The state kept in `path`, replayed; a fresh one when there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return SyncState(directory=directory, portal=portal)
    except OSError as error:
        raise StateError(f"cannot read the state file {path}: {_reason(error)}") from error
    lines = data.split(b"\n")
    state = _snapshot(path, lines[0])
    if (state.directory, state.portal) != (directory, portal):
        raise StateError(
            f"the state file {path} is for portal {state.portal!r} at {state.directory}, "
            f"not {portal!r} at {directory}; pass another --state file"
        )
    last = len(lines)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError:
            if number == last or (number == last - 1 and not lines[-1]):
                break  # torn while the last run was killed writing it: never acted upon
            raise StateError(f"{path}, line {number}: not valid JSON") from None
        try:
            state.apply(record)
        except (StateError, KeyError, TypeError, AttributeError) as error:
            raise StateError(
                f"{path}, line {number}: a step that cannot be read ({error})"
            ) from None
    return state


def _snapshot(path: Path, line: bytes) -> SyncState:
    try:
        head = msgspec.json.decode(line)
        if head.get("format") != STATE_FORMAT:
            raise StateError(
                f"{path} is not a directory-sync state file (format {head.get('format')!r}, "
                f"expected {STATE_FORMAT!r})"
            )
        session = head["session"]
        return SyncState(
            directory=head["directory"],
            portal=head["portal"],
            finished=head["finished"],
            ads=dict(head["ads"]),
            session=None if session is None else OpenSession(session["id"], session["staged"]),
            written=dict(head.get("written", {})),  # none in older state files
            lifetime_s=head.get("lifetime_s"),
        )
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError):
        raise StateError(f"{path}, line 1: not a directory-sync state snapshot") from None


class StateLog:
    """Writes `state` to `path` as a snapshot, then appends each step, applying it to
    `state` as well, so the state in memory and on disk stay the same."""

    def __init__(self, path: Path, state: SyncState) -> None:
        self.path = path
        self.state = state
        self._encoder = msgspec.json.Encoder()
        self._file = None
        state.finished = False
        try:
            self.compact()
        except StateWriteError as error:
            raise StateError(f"{error}; nothing was sent") from error.__cause__

    def finish(self) -> None:
        """The run came to its end: say so, in a fresh snapshot."""
        self.state.finished = True
        self.compact()

    def record(self, step: dict[str, Any]) -> None:
        self.state.apply(step)
        try:
            self._file.write(self._encoder.encode(step) + b"\n")
            # Flushed to the kernel before the request it announces is sent: a killed
            # process loses nothing written so far.
            self._file.flush()
        except OSError as error:
            raise self._cannot_write(error) from error

    def compact(self) -> None:
        """Rewrite the log as one snapshot line, atomically."""
        if self._file is not None:
            self._file.close()
            self._file = None
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self._write_snapshot(temporary)
            self._file = self.path.open("ab")
        except OSError as error:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise self._cannot_write(error) from error

    def _cannot_write(self, error: OSError) -> StateWriteError:
        return StateWriteError(f"cannot write the state file {self.path}: {_reason(error)}")

    def _write_snapshot(self, temporary: Path) -> None:
        state = self.state
        state.settle_pending()
        session = state.session
        snapshot = {
            "format": STATE_FORMAT,
            "directory": state.directory,
            "portal": state.portal,
            "finished": state.finished,
            "ads": state.ads,
            "session": None if session is None else {"id": session.id, "staged": session.staged},
            "written": {key: when for key, when in state.written.items() if key in state.ads},
            "lifetime_s": state.lifetime_s,
        }
        with temporary.open("wb") as file:
            file.write(self._encoder.encode(snapshot) + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
