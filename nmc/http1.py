"""HTTP/1.1 as nmc reads and writes it on both sides: one grammar (RFC 9110 and 9112) and one set
of limits. request_head reads the clients' request heads with it; transport writes the requests
to the replicas and reads their answers (upgrades included) with it.
"""

from __future__ import annotations

import re

# -- limits -------------------------------------------------------------------------------------

MAX_REQUEST_LINE = 8192        # a client's request line, bytes; longer: 414 (nginx's 8k buffers)
MAX_HEADER_BYTES = 32 * 1024   # a client's header lines together; more: 431
MAX_ANSWER_HEAD = 64 * 1024    # a replica's status line and header lines together; more: a 502
MAX_FIELDS = 100               # header lines of a request or an answer (http.client's limit)
MAX_CHUNK_LINE = 4096          # a chunk-size line (with its extensions) of an answer's body
MAX_INTERIM = 10               # interim (1xx) answers skipped before the final one
SMALL_BODY = 64 * 1024         # a body up to this size travels whole, in one write with its head
BLOCK = 256 * 1024             # bytes per piece of a streamed body, either way

# -- grammar ------------------------------------------------------------------------------------

_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
TOKEN = re.compile(_TCHAR + "+")  # a method, a header name, a coding (use fullmatch)
# A field value is any text but a control character other than tab (obs-text, 0x80-0xff, is
# allowed); in a whole head, CR and LF may only end its lines.
BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# header lines, each with its CRLF: a token, a colon, the value (no white space before the colon,
# no obsolete line folding: a line that starts with white space is no token)
FIELD_LINES = re.compile(rf"(?:{_TCHAR}+:[^\r\n]*\r\n)*")
FIELD = re.compile(rf"({_TCHAR}+):[ \t]*([^\r\n]*)\r\n")
STATUS_LINE = re.compile(r"(HTTP/1\.[01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
REQUEST_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
# a request target as relayed: origin-form (/path?query) or absolute-form; visible ASCII only
REQUEST_TARGET = re.compile(r"(/|https?://)[\x21-\x7e]*")
BAD_TARGET_CHAR = re.compile(r"[\x00-\x20\x7f]")
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # not str.isdigit: that takes '²' too
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def fields_are_valid(fields: str) -> bool:
    """True when `fields` (header lines, each ended by CRLF) are all well-formed field lines."""
    return not CONTROL.search(fields) and FIELD_LINES.fullmatch(fields) is not None
