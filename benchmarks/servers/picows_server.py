# mypy: disallow-subclassing-any=False
"""picows, as its docs show a server: a WSListener per connection, frames in callbacks.

echo: every message back. chat: every text message to every connected client with
``transport.send``; picows buffers without bound and evicts no one.
"""

from __future__ import annotations

from _args import parse, run
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

CLIENTS: set[WSTransport] = set()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        else:
            transport.send(frame.msg_type, frame.get_payload_as_bytes())


class Chat(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        CLIENTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            for client in CLIENTS:
                client.send(WSMsgType.TEXT, payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


def main() -> None:
    args = parse(__doc__)
    listener = Chat if args.kind == "chat" else Echo

    def listener_factory(request: WSUpgradeRequest) -> WSListener:
        return listener()

    async def serve_forever() -> None:
        server = await ws_create_server(listener_factory, args.host, args.port)
        await server.serve_forever()

    run(serve_forever, args.uvloop)


if __name__ == "__main__":
    main()
