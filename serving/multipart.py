"""multipart/form-data parsed from a body already read (and bounded by the server's body limit), synchronously, so
that the image route parses uploads on a worker thread instead of the event loop (issue 14). Starlette's own
`request.form()` parses on the event loop as the body streams in.

The same parser as Starlette's (python-multipart) and the same failures: a body it cannot parse, a part without a
name, or more than `max_files` files is a 400 with Starlette's messages.
"""
from python_multipart.multipart import MultipartParser, parse_options_header
from python_multipart.exceptions import FormParserError
from starlette.exceptions import HTTPException


def files(raw: bytes, content_type: str, field: str, max_files: int) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every file uploaded under the form field `field`, in the order sent; other fields and
    plain (non-file) values are ignored."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "Missing boundary in multipart.")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    found: list[tuple[str | None, bytes]] = []
    part: dict = {}
    count = {"files": 0}
    header = {"name": b"", "value": b""}

    def decode(value: bytes) -> str:
        try:
            return value.decode(charset)
        except (UnicodeDecodeError, LookupError):
            return value.decode("latin-1")

    def on_part_begin():
        part.clear()
        part.update(disposition=b"", data=bytearray())

    def on_part_data(data, start, end):
        part["data"] += data[start:end]

    def on_header_field(data, start, end):
        header["name"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        if header["name"].lower() == b"content-disposition":
            part["disposition"] = header["value"]
        header["name"], header["value"] = b"", b""

    def on_headers_finished():
        _, options = parse_options_header(part["disposition"])
        if b"name" not in options:
            raise HTTPException(400, 'The Content-Disposition header field "name" must be provided.')
        part["name"] = decode(options[b"name"])
        part["filename"] = decode(options[b"filename"]) if b"filename" in options else None
        part["file"] = b"filename" in options
        if part["file"]:
            count["files"] += 1
            if count["files"] > max_files:
                raise HTTPException(400, f"Too many files. Maximum number of files is {max_files}.")

    def on_part_end():
        if part.get("file") and part["name"] == field:
            found.append((part["filename"] or None, bytes(part["data"])))

    callbacks = {"on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
                 "on_header_field": on_header_field, "on_header_value": on_header_value,
                 "on_header_end": on_header_end, "on_headers_finished": on_headers_finished}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(raw)
        parser.finalize()
    except FormParserError:
        raise HTTPException(400, "Invalid multipart data.") from None
    return found
