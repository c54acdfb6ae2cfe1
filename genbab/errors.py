"""Errors a user can cause and act on.

Every failure caused by the user's input (a model we cannot read or translate, a property
file that does not parse) is raised as a subclass of :class:`GenbabError` carrying a one-line
message. The CLI prints that line and exits with code 2; anything else is an internal error
(exit 1).
"""


class GenbabError(Exception):
    """Base class of the errors caused by user input; ``str(err)`` is one readable line."""


class ModelError(GenbabError):
    """The ONNX model cannot be read, upgraded or translated."""


class SpecError(GenbabError):
    """The VNN-LIB property cannot be read or parsed."""


class UnsupportedOpError(ModelError):
    """The model uses ONNX operators that genbab cannot translate."""
