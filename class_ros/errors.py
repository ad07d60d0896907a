"""The one exception type for errors a user can cause and fix (bad file, wrong topic, mismatch).

The CLI prints its message as one line without a traceback; internal invariants use assert.
"""


class ClassRosError(Exception):
    """A user-facing error: the message is one sentence that says what is wrong and what to do."""
