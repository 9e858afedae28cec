"""User-facing errors.

Anything a user can fix (bad file, bad flag, missing package) raises ZhgptError with a one-line
message that names the file/line and says what to do. The CLI prints it and exits non-zero;
a traceback is only shown for real bugs.
"""


class ZhgptError(Exception):
    """An error caused by input or environment, with a message meant for the user."""

    exit_code = 2

