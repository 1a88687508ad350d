"""Errors a user caused or can fix: the CLI prints their message as one line, no traceback."""


class UserError(Exception):
    pass
