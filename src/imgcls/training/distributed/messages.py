"""The coordinator's wire format: JSON objects, each after a 4-byte big-endian length.

Only plain data crosses the network (never pickles): a peer can send nothing that runs code,
and a message that is not a bounded, well-formed JSON object is refused.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from typing import Any

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CONTROL_MAX_BYTES = 4096
# Numbers per all-reduce message: at most 25 bytes each in JSON, well under MAX_MESSAGE_BYTES.
CHUNK_VALUES = 100_000


class ProtocolError(Exception):
    """A peer sent something that is not one of the protocol's messages."""


class Channel:
    """One TCP connection carrying length-prefixed JSON objects; safe to send from threads."""

    def __init__(self, sock: socket.socket, timeout: float | None = None):
        sock.settimeout(timeout)
        self.sock = sock
        self.peer = _peer_name(sock)
        self._send_lock = threading.Lock()

    def set_timeout(self, seconds: float | None) -> None:
        """How long a receive (or a blocked send) may wait; TimeoutError after that."""
        self.sock.settimeout(seconds)

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        if len(body) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
        with self._send_lock:
            self.sock.sendall(HEADER.pack(len(body)) + body)

    def receive(self, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
        """The next message; EOFError when the peer closed, ProtocolError when it is invalid."""
        (size,) = HEADER.unpack(self._read(HEADER.size))
        if size > limit:
            raise ProtocolError(f"announced a {size}-byte message; the bound is {limit}")
        try:
            message = json.loads(self._read(size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"sent a message that is not UTF-8 JSON ({exc})") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("sent JSON that is not an object with a string 'type'")
        return message

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _read(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError("connection closed")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "an unknown peer"
    return f"{host}:{port}"


def is_index(value: object, count: int) -> bool:
    """An int (not a bool) in range(count)."""
    return type(value) is int and 0 <= value < count


def numbers(value: object) -> list[float]:
    """`value` as a list of floats, or ProtocolError when it is not a list of numbers."""
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ProtocolError("sent 'values' that are not a list of numbers")
    return [float(v) for v in value]
