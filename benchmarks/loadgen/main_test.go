package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
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

// TestParseTS: the send time putLine writes comes back, and a line whose time field
// is not lowercase hex gives -1.
func TestParseTS(t *testing.T) {
	line := bytes.Repeat([]byte{'x'}, 64)
	for _, ts := range []int64{0, 1, 15, 16, 0x0123456789abcdef, 1<<63 - 1} {
		putLine(line, 7, 42, ts)
		if got := parseTS(line); got != ts {
			t.Fatalf("ts %x came back as %x", ts, got)
		}
		if s, q := parseSenderSeq(line); s != 7 || q != 42 {
			t.Fatalf("sender/seq %d/%d", s, q)
		}
	}
	for _, bad := range []byte{'A', 'g', ' ', 0, 0xff, '/', ':', '`'} {
		putLine(line, 1, 1, 0x1234)
		line[20] = bad
		if got := parseTS(line); got != -1 {
			t.Fatalf("byte %q: got %x, want -1", bad, got)
		}
	}
}

// serverFrame is one unmasked frame as a server sends it.
func serverFrame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	n := len(payload)
	b := []byte{b0}
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n < 65536:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// TestRawConnNext: the chat receivers' frame reader, fed by a real loopback socket
// through a 16-byte buffer (so it compacts and grows), in pieces of every size from
// one byte up: every length class, a fragmented message, a ping (answered with a
// masked pong carrying its payload), a pong (skipped), then a close.
func TestRawConnNext(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 7001) // 70,010 bytes: 64-bit length
	mid := bytes.Repeat([]byte{'m'}, 300)           // 16-bit length
	var stream []byte
	stream = append(stream, serverFrame(true, 0x1, []byte("hello"))...)
	stream = append(stream, serverFrame(true, 0x9, []byte("pingdata"))...)
	stream = append(stream, serverFrame(true, 0x2, mid)...)
	stream = append(stream, serverFrame(false, 0x1, []byte("frag-"))...)
	stream = append(stream, serverFrame(true, 0xA, []byte("pong"))...) // between fragments
	stream = append(stream, serverFrame(false, 0x0, []byte("ment-"))...)
	stream = append(stream, serverFrame(true, 0x0, []byte("ed"))...)
	stream = append(stream, serverFrame(true, 0x1, big)...)
	stream = append(stream, serverFrame(true, 0x1, nil)...)
	stream = append(stream, serverFrame(true, 0x8, []byte{3, 232})...)
	want := [][]byte{[]byte("hello"), mid, []byte("frag-ment-ed"), big, {}}

	for _, piece := range []int{1, 3, 7, 64, 100000} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pong := make(chan []byte, 1)
		go func() {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			defer s.Close()
			for i := 0; i < len(stream); i += piece {
				j := i + piece
				if j > len(stream) {
					j = len(stream)
				}
				if _, err := s.Write(stream[i:j]); err != nil {
					return
				}
			}
			got := make([]byte, 2+4+8)
			_, _ = io.ReadFull(s, got)
			pong <- got
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		rc := &rawConn{tc: c.(*net.TCPConn), buf: make([]byte, 16)}
		for k, w := range want {
			got, err := rc.next()
			if err != nil {
				t.Fatalf("piece %d, message %d: %v", piece, k, err)
			}
			if !bytes.Equal(got, w) {
				t.Fatalf("piece %d, message %d: %d bytes, want %d", piece, k, len(got), len(w))
			}
		}
		if _, err := rc.next(); err != errClosed {
			t.Fatalf("piece %d: after the close frame got %v", piece, err)
		}
		p := <-pong
		if p[0] != 0x8A || p[1] != 0x80|8 {
			t.Fatalf("pong header %x", p[:2])
		}
		for i := range p[6:] {
			p[6+i] ^= p[2+i&3]
		}
		if string(p[6:]) != "pingdata" {
			t.Fatalf("pong payload %q", p[6:])
		}
		hardCloseTCP(rc.tc)
		ln.Close()
	}
}
