"""What the xDS server reports as it serves: the seam for the control plane's own metrics.

The server calls an `XdsObserver` (default: `NO_OBSERVER`, which does nothing) at
four points of every stream; the wiring passes one that counts them (see
`controlplane.telemetry`). Calls come from the event loop's thread, synchronously,
on the hot path of every stream: implementations must be cheap and must not block.
"""

from __future__ import annotations

from typing import Protocol


class XdsObserver(Protocol):
    """Receives the xDS server's events. Every method must be cheap and must not raise."""

    def connected(self, group: str) -> None:
        """A stream was placed in `group` (its first request was accepted)."""

    def disconnected(self, group: str) -> None:
        """A stream that `connected` to `group` ended, however it ended."""

    def pushed(self, group: str, type_url: str, version: str, *, after_change: bool) -> None:
        """A response of `type_url` at snapshot `version` was written to a proxy of `group`.

        `after_change` is True when the group's snapshot changed and the server pushed
        on its own (not in answer to a request): the push latency counts those only.
        """

    def acked(self, group: str, type_url: str) -> None:
        """A proxy of `group` ACKed the latest response of `type_url`."""

    def nacked(self, group: str, type_url: str) -> None:
        """A proxy of `group` rejected the latest response of `type_url`."""


class _NoObserver:
    def connected(self, group: str) -> None:
        pass

    def disconnected(self, group: str) -> None:
        pass

    def pushed(self, group: str, type_url: str, version: str, *, after_change: bool) -> None:
        pass

    def acked(self, group: str, type_url: str) -> None:
        pass

    def nacked(self, group: str, type_url: str) -> None:
        pass


NO_OBSERVER: XdsObserver = _NoObserver()
"""The default observer: ignores everything."""
