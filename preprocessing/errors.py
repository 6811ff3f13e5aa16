"""Errors a user can act on.

Every check that rejects input raises one of these with a single sentence naming the file, column, row and what
was expected. The flow records the sentence as the MLflow run's failure reason; the CLI prints it without a
traceback. Anything else that escapes is a bug and keeps its traceback.
"""


class TorchyardError(Exception):
    """Base for failures caused by the user's input or configuration, not by a bug."""


class DataError(TorchyardError):
    """The data cannot be read or does not fit the configuration."""


def rows_text(numbers, limit: int = 5) -> str:
    """'data row 7' or 'data rows 2, 5, 9, 11, 12 and 40 more': the first few of many 1-based row numbers."""
    numbers = [int(n) for n in numbers]
    if len(numbers) == 1:
        return f"data row {numbers[0]}"
    shown = ", ".join(str(n) for n in numbers[:limit])
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"data rows {shown}{more}"


def user_facing(exc: BaseException) -> TorchyardError | None:
    """The TorchyardError behind `exc` (itself, or in its cause/context chain), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TorchyardError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
