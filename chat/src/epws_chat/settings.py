"""The chat's per-connection settings: the constants of the Go original, adjustable.

One frozen :class:`Settings` is built from the command line
(:func:`~epws_chat.options.make_settings`) and shared by every
:class:`~epws_chat.client.Client` and the server that accepts them; kept apart from
the client so that the options and the server read it without the connection code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """The constants of the Go original, adjustable (tests shorten the timers).

    Attributes:
        send_buffer: how many full messages a client may fall behind before it is
            evicted (Go: the ``send`` channel's capacity, 256); the bound is kept in
            bytes, ``send_buffer x read_limit``, in the client's outgoing buffer.
        read_limit: largest message accepted, in bytes; a larger one closes the
            connection with 1009 (Go: ``maxMessageSize``, 512).
        pong_wait: seconds a client may stay without a pong before it is dropped;
            only a pong counts (Go: ``pongWait``, 60 s, the read deadline that pongs
            push forward). epws's keepalive does it: ``ping_timeout`` is
            ``pong_wait - ping_period``, so a client is dropped ``pong_wait`` after the
            last ping it answered (Go: after its last pong, one round trip later).
        ping_period: seconds between the (empty) pings; must be shorter than
            ``pong_wait`` so the pong can arrive in time (Go: ``pingPeriod`` =
            pongWait * 9/10, 54 s).
        write_wait: seconds a client's outgoing data may stay unsent, and a close
            frame may wait for the peer's answer, before the connection is dropped
            (Go: ``writeWait``, 10 s, the deadline of every write).
        history: messages of its room an ``epws.chat.v1`` client receives on joining.
        rate: messages per second a connection may send, on average (a token bucket;
            0: no limit). Over it the sender is told once and its excess is dropped,
            so one flooder cannot fill every member's send buffer until the room is
            evicted (the Go original has no defence against this).
        burst: messages a connection may send at once above ``rate``.
        abuse_limit: dropped messages (decaying at ``rate`` per second) after which
            the connection is closed with 1008: a client that keeps flooding after
            being told is not a person typing.
        socket_send_buffer: SO_SNDBUF of each connection in bytes (the kernel doubles
            it; 0: the kernel's default, which on Linux grows to megabytes). It bounds
            what a stuck client holds in the kernel, on top of ``send_limit``.
    """

    send_buffer: int = 256
    read_limit: int = 512
    pong_wait: float = 60.0
    ping_period: float = 54.0
    write_wait: float = 10.0
    history: int = 100
    rate: float = 10.0
    burst: int = 60
    abuse_limit: int = 200
    socket_send_buffer: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.send_buffer < 1:
            raise ValueError("send_buffer must be at least 1")
        if self.read_limit < 1:
            raise ValueError("read_limit must be at least 1")
        if not 0 < self.ping_period < self.pong_wait:
            raise ValueError("ping_period must be positive and shorter than pong_wait")
        if self.write_wait <= 0:
            raise ValueError("write_wait must be positive")
        if self.history < 0:
            raise ValueError("history must not be negative")
        if self.rate < 0 or self.burst < 1 or self.abuse_limit < 1:
            raise ValueError("rate must not be negative; burst and abuse_limit must be positive")
        if self.socket_send_buffer < 0:
            raise ValueError("socket_send_buffer must not be negative")

    @property
    def send_limit(self) -> int:
        """The send buffer's bound in bytes."""
        return self.send_buffer * self.read_limit
