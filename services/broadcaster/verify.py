"""Events are verified before they are forwarded (docs/DESIGN.md §9; docs/SECURITY.md §2).

With signing on, an event (or canary) of this region's events stream is forwarded only when
its `Xr-Sig` verifies against the trusted keys (`signing.trusted_keys_file`, the file the
replayers read): a `bridge` key of its origin. Anything else (unsigned, an unknown key, a key
of another region or role, a bad signature: written with a stolen NATS credential, or
altered) would be dead-lettered by every target's replayer anyway; refused here, it costs the
targets nothing and is filed in this region's DLQ (one `forward_refused` letter per target,
as every refusal of the forwarder), its error saying why the signature does not verify.

A message that does not decode is not refused here: the policy forwards it (its rule 5) so
that each target's replayer files it with the decoder's reason.

`EventCheck.load` reads the trusted keys once, at start (a file that cannot be used stops the
broadcaster: `TrustedKeysError`, exit 2). The file is re-read when it changes: looked at no
more than every `RECHECK_S`, and at once when an event is signed by a key it does not trust
(so a key added everywhere for a rotation is trusted here too, without a restart or SIGHUP,
from its first event on); a changed file that cannot be used keeps the keys in use
(`shared.signing.reload_verifier` logs why).

`RouteCache` verifies each stored message once for every target (`policy.py`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

from shared.envelope import MalformedEventError, decode
from shared.lifecycle import ServiceError
from shared.settings import SigningSettings
from shared.signing import KeyFileError, SignatureError, Verifier, load_verifier, reload_verifier

__all__ = ["RECHECK_S", "EventCheck", "TrustedKeysError", "unverified_reason"]

# How often, at most, the trusted-keys file is looked at for a change.
RECHECK_S = 1.0
# Refusals a key added to the file since it was read would answer.
_KEY_REASONS = frozenset({"unknown_key", "wrong_region", "wrong_role"})


class TrustedKeysError(ServiceError):
    """The trusted-keys file cannot be used at start; `str()` names it and the problem."""

    exit_code = 2


def unverified_reason(exc: SignatureError) -> str:
    """The dead letter's error for an event whose signature does not verify."""
    return f"not forwarded: its signature does not verify ({exc.reason}: {exc})"


class EventCheck:
    """Verifies the events this region's broadcaster forwards; see the module docstring."""

    def __init__(
        self,
        verifier: Verifier,
        signing: SigningSettings,
        regions: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verifier = verifier
        self._signing = signing
        self._regions = tuple(regions)
        self._clock = clock
        self._checked_at = clock()
        self._stamp = self._file_stamp()

    @classmethod
    def load(cls, signing: SigningSettings | None, regions: Sequence[str]) -> EventCheck | None:
        """The check, or None when signing is off. Raises TrustedKeysError."""
        if signing is None or signing.mode == "off":
            return None
        try:
            verifier = load_verifier(signing, regions=regions)
        except KeyFileError as exc:
            raise TrustedKeysError(str(exc)) from None
        assert verifier is not None  # signing is on
        return cls(verifier, signing, regions)

    def refusal(self, headers: Mapping[str, str] | None, payload: bytes) -> str | None:
        """Why this stored message must not be forwarded, or None."""
        try:
            event = decode(headers, payload)
        except MalformedEventError:
            return None  # forwarded as malformed: the targets' replayers say why
        self._reload_if_changed()
        try:
            self._verifier.verify(event)
        except SignatureError as exc:
            if exc.reason not in _KEY_REASONS or not self._reload_if_changed(now=True):
                return unverified_reason(exc)
        else:
            return None
        # The file changed since it was last looked at: a key just added is trusted at once.
        try:
            self._verifier.verify(event)
        except SignatureError as exc:
            return unverified_reason(exc)
        return None

    def reload(self) -> bool:
        """Re-read the file now (for a SIGHUP handler); whether the keys were replaced."""
        self._checked_at = self._clock()
        self._stamp = self._file_stamp()
        return reload_verifier(self._verifier, self._signing, regions=self._regions)

    def _reload_if_changed(self, *, now: bool = False) -> bool:
        """Re-read the file if it changed (looked at no more than every RECHECK_S unless
        `now`); whether the keys were replaced."""
        at = self._clock()
        if not now and at - self._checked_at < RECHECK_S:
            return False
        self._checked_at = at
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return reload_verifier(self._verifier, self._signing, regions=self._regions)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        path = self._signing.trusted_keys_file
        if path is None:
            return None
        try:
            found = os.stat(path)
        except OSError:
            return None  # gone for a moment (a ConfigMap swap): the keys in use stay
        return found.st_ino, found.st_mtime_ns, found.st_size
