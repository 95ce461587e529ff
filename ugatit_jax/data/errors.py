"""The one exception type the data package raises for bad input."""

from ugatit_jax.errors import ExpectedError


class DatasetError(ExpectedError, ValueError):
    """A dataset cannot be used as asked.

    Subclasses ValueError so callers that already treat bad arguments as
    ValueError keep working; the message always names the file, folder or
    option at fault and what would fix it.
    """


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped.

    A separate category so a run can silence, count or escalate these
    (``warnings.simplefilter('error', UnreadableImageWarning)``) on its own.
    """
