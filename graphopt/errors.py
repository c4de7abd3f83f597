"""Error classes that map to the CLI's exit codes.

1 = bad input or usage (InputError), 2 = verification or budget not met
(VerificationFailed), 3 = internal error (PassError and anything unexpected).
"""


class GraphoptError(Exception):
    """Base class of every error graphopt raises on purpose."""

    exit_code = 3


class InputError(GraphoptError):
    """The user's input (file, option, data) is unusable: one clear line, exit 1."""

    exit_code = 1


class VerificationFailed(GraphoptError):
    """The result does not meet the requested accuracy or budget: exit 2."""

    exit_code = 2

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class PassError(GraphoptError):
    """A pass raised or broke the graph (a compiler bug): exit 3, naming the pass."""

    exit_code = 3

    def __init__(self, message, pass_name=None, report=None):
        super().__init__(message)
        self.pass_name = pass_name
        self.report = report
