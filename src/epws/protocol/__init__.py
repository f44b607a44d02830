"""Sans-I/O core of epws: framing, the connection state machine and the opening handshake."""
