package main

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestAppendMaskedFrame checks the word-at-a-time masking against the definition
// (RFC 6455 §5.3: byte i XOR key[i mod 4]) for every length class and tail length.
func TestAppendMaskedFrame(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 125, 126, 127, 1000, 16383, 16384, 65535, 65536, 70001} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i*31 + 7)
		}
		frame := appendMaskedFrame([]byte("prefix"), 0x2, payload)
		if !bytes.HasPrefix(frame, []byte("prefix")) {
			t.Fatalf("n=%d: prefix lost", n)
		}
		f := frame[len("prefix"):]
		if f[0] != 0x82 || f[1]&0x80 == 0 {
			t.Fatalf("n=%d: bad first bytes %x", n, f[:2])
		}
		hdr := 2
		switch f[1] & 0x7f {
		case 126:
			hdr += 2
		case 127:
			hdr += 8
		}
		key := f[hdr : hdr+4]
		body := f[hdr+4:]
		if len(body) != n {
			t.Fatalf("n=%d: body of %d bytes", n, len(body))
		}
		for i := range body {
			if body[i]^key[i&3] != payload[i] {
				t.Fatalf("n=%d: byte %d unmasks wrong", n, i)
			}
		}
	}
}

// TestCheckSwitch: the connect mode's own handshake accepts a 101 with the accept value
// of its key (any case of the header name) and nothing else.
func TestCheckSwitch(t *testing.T) {
	good := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"sec-websocket-accept: " + connectAccept
	if err := checkSwitch([]byte(good)); err != nil {
		t.Fatalf("refused a good 101: %v", err)
	}
	for _, bad := range []string{
		"HTTP/1.1 400 Bad Request\r\nSec-WebSocket-Accept: " + connectAccept,
		"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x" + connectAccept,
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket",
	} {
		if err := checkSwitch([]byte(bad)); err == nil {
			t.Fatalf("accepted %q", bad)
		}
	}
}

// TestAppendStamped: the echo writer's stamped template is the frame appendMaskedFrame
// builds for the message carrying that send time, for every frame length class.
func TestAppendStamped(t *testing.T) {
	for _, n := range []int{8, 125, 126, 16384, 65536, 70001} {
		msg := bytes.Repeat([]byte{'e'}, n)
		template := appendMaskedFrame(nil, 0x2, msg)
		for _, stamp := range []uint64{0, 1, 0x0123456789abcdef, ^uint64(0)} {
			binary.LittleEndian.PutUint64(msg, stamp)
			want := appendMaskedFrame([]byte("prefix"), 0x2, msg)
			got := appendStamped([]byte("prefix"), template, n, stamp)
			if !bytes.Equal(got, want) {
				t.Fatalf("n=%d stamp=%x: stamped frame differs", n, stamp)
			}
		}
	}
}
