"""What the xregion library raises for an operator to act on.

Library code (`local`, `ops`) raises these, with `str()` one line for the operator; only the
command line (`services.xregion.cli`) turns them into a message and an exit code::

    Exception
     └── XregionError      the command's work failed (exit 1)
          └── UsageError   what was asked cannot be done as asked: a bad name, value or flag
                           (exit 2)

Other libraries' errors are translated where they enter (`raise XregionError(...) from exc`),
except the few the command line maps itself (`shared.settings.ConfigError`,
`shared.lifecycle.ServiceError`, `services.xregion.natsconf.TopologyError`).
"""

from __future__ import annotations

__all__ = ["UsageError", "XregionError"]


class XregionError(Exception):
    """A command's work failed in a way the operator can act on."""


class UsageError(XregionError):
    """What was asked names something that is not there or cannot be right."""
