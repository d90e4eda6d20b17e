"""Errors every stage may raise and the command line reports in one line.

This module imports nothing from the stages, so any of them (preprocess, shards, train,
evaluate, tools) can import it without reaching upward.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration that the user can fix (a missing file, a preset typo, data that
    does not hold what the command needs). ``crisscross`` prints ``crisscross <cmd>: error: <message>``
    and exits with code 2; ``--debug`` shows the traceback. The message must say what is wrong
    and, where it can, what to do instead."""
