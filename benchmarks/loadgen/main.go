// Command loadgen drives a WebSocket server on loopback and prints one JSON object
// with what it measured. It is the load side of benchmarks/run: written in Go with
// Debian's gorilla/websocket so that the generator, pinned to its own core, can take
// in millions of chat lines per second and is not the limit of a Python server.
//
// Modes:
//
//	echo:    N connections, K messages in flight each; messages/s and round-trip times.
//	tcpecho: the same over raw TCP (-url tcp://127.0.0.1:PORT): fixed-size messages,
//	         no WebSocket framing; the baseline of the echo rows.
//	chat:    R receivers and S senders on a broadcast server; delivered lines/s,
//	         delivery latency, lost lines and receivers the server closed (WebSocket
//	         spoken here, not by gorilla: see rawConn).
//	idle:    open N connections, report, hold them until a line on stdin.
//	connect: W workers that open a connection, finish the handshake and drop it (the
//	         handshake spoken here, not by gorilla's Dialer: see runConnect).
//	scale:   one of the processes holding N idle epws.chat.v1 connections to
//	         epws-chat, driven by benchmarks/scale.py (see runScale).
//
// Every run is bounded: a watchdog ends the process after -deadline seconds.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

var (
	mode       = flag.String("mode", "echo", "echo | tcpecho | chat | idle | connect | scale")
	url        = flag.String("url", "ws://127.0.0.1:8080/ws", "server URL (loopback only)")
	serverPID  = flag.Int("serverpid", 0, "server process id, to report its CPU use over the measured window")
	conns      = flag.Int("conns", 1, "echo/idle: connections")
	size       = flag.Int("size", 64, "echo: message size in bytes (>= 8)")
	inflight   = flag.Int("inflight", 16, "echo: messages in flight per connection")
	receivers  = flag.Int("receivers", 100, "chat: receiving connections")
	senders    = flag.Int("senders", 4, "chat: sending connections (they receive too, not counted)")
	rate       = flag.Float64("rate", 0, "chat: offered deliveries/s (rate x receivers); 0 = flat out")
	window     = flag.Int("window", 32, "chat flat out: lines each sender may have outstanding")
	lineSize   = flag.Int("linesize", 64, "chat: bytes per line (>= 32, < 512)")
	workers    = flag.Int("workers", 16, "connect: concurrent handshakes")
	dialConc   = flag.Int("dialconc", 64, "concurrent dials while setting up connections")
	warmup     = flag.Float64("warmup", 0.5, "seconds of load before measuring")
	duration   = flag.Float64("duration", 2, "seconds measured")
	drain      = flag.Float64("drain", 3, "chat: after the senders stop, give up waiting for lines when none came for this long")
	hold       = flag.Float64("hold", 60, "idle: longest time to hold the connections")
	cpuProfile = flag.String("cpuprofile", "", "write a Go CPU profile of the generator to this file")
	deadline   = flag.Float64("deadline", 120, "the process exits after this many seconds whatever happens")
	start      = time.Now()
)

// now is the monotonic time since the process started, in nanoseconds: every
// timestamp is taken and compared inside this one process.
func now() int64 { return int64(time.Since(start)) }

func main() {
	flag.Parse()
	if !loopbackURL(*url) {
		fail("only loopback URLs are allowed: %s", *url)
	}
	time.AfterFunc(time.Duration(*deadline*float64(time.Second)), func() {
		fail("deadline of %.0f s reached", *deadline)
	})
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fail("%v", err)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	var out map[string]any
	switch *mode {
	case "echo":
		out = runEcho()
	case "tcpecho":
		out = runTCPEcho()
	case "chat":
		out = runChat()
	case "idle":
		out = runIdle()
	case "connect":
		out = runConnect()
	case "scale":
		out = runScale()
	default:
		fail("unknown mode %q", *mode)
	}
	out["mode"] = *mode
	emit(out)
}

// loopbackURL says whether u names a server on this machine's loopback interface:
// ws:// for the WebSocket modes, tcp:// for tcpecho.
func loopbackURL(u string) bool {
	for _, scheme := range []string{"ws://", "tcp://"} {
		for _, host := range []string{"127.0.0.1:", "localhost:"} {
			if strings.HasPrefix(u, scheme+host) {
				return true
			}
		}
	}
	return false
}

func emit(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func fail(format string, args ...any) {
	emit(map[string]any{"mode": *mode, "error": fmt.Sprintf(format, args...)})
	os.Exit(1)
}

// ---- latency histogram: log-linear buckets, about 1.6 % wide, no allocation per sample.

const histBuckets = 128 + 57*64

type hist struct{ counts [histBuckets]uint64 }

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < 128 {
		return int(u)
	}
	shift := bits.Len64(u) - 7
	return 128 + (shift-1)*64 + int(u>>uint(shift)) - 64
}

func valueOf(b int) float64 {
	if b < 128 {
		return float64(b)
	}
	shift := (b-128)/64 + 1
	top := uint64((b-128)%64 + 64)
	lo := top << uint(shift)
	return float64(lo) + float64(uint64(1)<<uint(shift))/2
}

func (h *hist) add(v int64) { h.counts[bucketOf(v)]++ }

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// quantile returns the q-quantile in milliseconds (NaN-free: 0 when empty).
func (h *hist) quantile(q float64) float64 {
	var n uint64
	for _, c := range h.counts {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n-1)) + 1
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return valueOf(i) / 1e6
		}
	}
	return 0
}

// ---- CPU accounting from /proc/PID/stat (utime + stime, in clock ticks).

func cpuTicks(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// coreBusy returns, per core, the ticks spent not idle (everyone's work, ours included).
func coreBusy() map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var busy int64
		for i, v := range f[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			if i != 3 && i != 4 { // idle, iowait
				busy += n
			}
		}
		out[f[0]] = busy
	}
	return out
}

type cpuWindow struct {
	t0, gen0, srv0 int64
	cores          map[string]int64
}

func beginCPU() cpuWindow {
	return cpuWindow{now(), cpuTicks("self"), cpuTicks(strconv.Itoa(*serverPID)), coreBusy()}
}

// end returns the generator's and the server's CPU use over the window, in percent
// of one core (the Linux clock tick is 1/100 s).
func (w cpuWindow) end(out map[string]any) {
	dt := float64(now()-w.t0) / 1e9
	out["gen_cpu"] = float64(cpuTicks("self")-w.gen0) / dt
	if *serverPID > 0 && w.srv0 >= 0 {
		out["server_cpu"] = float64(cpuTicks(strconv.Itoa(*serverPID))-w.srv0) / dt
	}
	// How busy each core was in all (ours plus anyone else's work on a shared machine).
	for name, t := range coreBusy() {
		if t0, ok := w.cores[name]; ok {
			out[name+"_busy"] = float64(t-t0) / dt
		}
	}
}

// ---- dialing

func dialer(bufSize int) *websocket.Dialer {
	return &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   bufSize,
		WriteBufferSize:  bufSize,
	}
}

// dialEach runs dial(i) for i in [0, n) with at most dialConc at a time and returns
// how many failed, with the first failure's error.
func dialEach(n int, dial func(i int) error) (int, error) {
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, *dialConc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := dial(i); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}(i)
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		msg, _ := firstErr.Load().(string)
		return int(f), fmt.Errorf("%d of %d dials failed, first: %s", f, n, msg)
	}
	return 0, nil
}

// dialAll opens n connections with at most dialConc handshakes at a time.
func dialAll(n, bufSize int) ([]*websocket.Conn, int, error) {
	d := dialer(bufSize)
	out := make([]*websocket.Conn, n)
	failed, err := dialEach(n, func(i int) error {
		c, _, err := d.Dial(*url, nil)
		out[i] = c
		return err
	})
	return out, failed, err
}

func hardClose(c *websocket.Conn) {
	if c == nil {
		return
	}
	if tc, ok := c.UnderlyingConn().(*net.TCPConn); ok {
		hardCloseTCP(tc)
		return
	}
	_ = c.Close()
}

func closeAll(cs []*websocket.Conn) {
	for _, c := range cs {
		hardClose(c)
	}
}

// readInto reads one whole message into buf (grown as needed) and returns it.
func readInto(c *websocket.Conn, buf []byte) ([]byte, []byte, error) {
	_, r, err := c.NextReader()
	if err != nil {
		return buf, nil, err
	}
	n := 0
	for {
		if n == len(buf) {
			nb := make([]byte, 2*len(buf))
			copy(nb, buf)
			buf = nb
		}
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return buf, buf[:n], nil
		}
		if err != nil {
			return buf, nil, err
		}
	}
}

// echoReadBuffer is the read buffer of an echo connection: one message and its
// header, and at least gorilla's default of 4,096 bytes. A smaller one (it was the
// message plus 64 bytes, 128 for 64-byte messages) made the generator read a
// server's batch of replies two at a time, a system call per two messages, which no
// real client does; the raw TCP echo reads with the same size.
func echoReadBuffer() int {
	if n := *size + 64; n > 4096 {
		return n
	}
	return 4096
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// ---- echo

func runEcho() map[string]any {
	if *size < 8 {
		fail("-size must be >= 8")
	}
	cs, _, err := dialAll(*conns, echoReadBuffer())
	if err != nil {
		closeAll(cs)
		fail("%v", err)
	}
	var measuring, stop atomic.Bool
	counts := make([]int64, *conns)
	hists := make([]*hist, *conns)
	var errs atomic.Int64
	for i, c := range cs {
		hists[i] = &hist{}
		tokens := make(chan struct{}, *inflight)
		for k := 0; k < *inflight; k++ {
			tokens <- struct{}{}
		}
		go func(c *websocket.Conn) { // writer
			// Every message whose token is back goes out in ONE write: the frames are
			// built here (masked with a fixed key) rather than by WriteMessage, which
			// costs a system call and a crypto/rand key per message and made the
			// generator, not the server, the limit of this scenario.
			// The frame is masked once: with a fixed key and a fixed body, only the
			// send time in the first 8 bytes differs from one message to the next
			// (appendStamped). The server gets the same bytes; the generator no
			// longer spends a third of its time masking and lets the faster servers
			// show their speed.
			template := appendMaskedFrame(nil, 0x2, bytes.Repeat([]byte{'e'}, *size))
			nc := c.UnderlyingConn()
			var out []byte
			for range tokens {
				n := 1
			more:
				for {
					select {
					case <-tokens:
						n++
					default:
						break more
					}
				}
				if stop.Load() {
					return
				}
				out = out[:0]
				for k := 0; k < n; k++ {
					out = appendStamped(out, template, *size, uint64(now()))
				}
				if _, err := nc.Write(out); err != nil {
					return
				}
			}
		}(c)
		go func(i int, c *websocket.Conn) { // reader
			buf := make([]byte, *size+64)
			h := hists[i]
			var data []byte
			var err error
			for {
				buf, data, err = readInto(c, buf)
				if err != nil {
					if !stop.Load() {
						errs.Add(1)
					}
					return
				}
				if len(data) >= 8 && measuring.Load() {
					h.add(now() - int64(binary.LittleEndian.Uint64(data)))
					counts[i]++
				}
				tokens <- struct{}{}
			}
		}(i, c)
	}
	time.Sleep(seconds(*warmup))
	cpu := beginCPU()
	measuring.Store(true)
	time.Sleep(seconds(*duration))
	measuring.Store(false)
	out := map[string]any{}
	cpu.end(out)
	elapsed := float64(now()-cpu.t0) / 1e9
	stop.Store(true)
	var total int64
	all := &hist{}
	for i := range cs {
		total += counts[i]
		all.merge(hists[i])
	}
	closeAll(cs)
	out["conns"] = *conns
	out["size"] = *size
	out["inflight"] = *inflight
	out["msgs_per_s"] = float64(total) / elapsed
	out["p50_ms"] = all.quantile(0.50)
	out["p99_ms"] = all.quantile(0.99)
	out["conn_errors"] = errs.Load()
	if total == 0 && errs.Load() > 0 {
		out["error"] = "every connection failed before a message came back"
	}
	return out
}

// appendStamped appends the masked frame template (of a size-byte message) with the
// first 8 bytes of its message replaced by t (little endian), masked as
// appendMaskedFrame masks them: the frame appendMaskedFrame would build for that
// message, at the cost of a copy.
func appendStamped(b, template []byte, size int, t uint64) []byte {
	start := len(b)
	b = append(b, template...)
	body := b[start+len(template)-size:]
	var stamp [8]byte
	binary.LittleEndian.PutUint64(stamp[:], t)
	for i := 0; i < 8; i++ {
		body[i] = stamp[i] ^ frameKey[i&3]
	}
	return b
}

// frameKey is the masking key of every client frame the generator builds itself:
// fixed, since the server's work is the same for any key (it unmasks every byte).
var frameKey = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// appendMaskedFrame appends one final client frame (RFC 6455 §5.2) to b.
//
// The payload is masked eight bytes at a time: masking byte by byte with append
// cost about a nanosecond a byte, which capped the generator at some 60,000
// messages/s of 16 KiB and made it, not the server, the limit of those rows.
func appendMaskedFrame(b []byte, opcode byte, payload []byte) []byte {
	key := frameKey
	n := len(payload)
	b = append(b, 0x80|opcode)
	switch {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 65536:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, payload...)
	dst := b[start:]
	k32 := binary.LittleEndian.Uint32(key[:])
	k64 := uint64(k32) | uint64(k32)<<32
	i := 0
	for ; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(dst[i:])^k64)
	}
	for ; i < n; i++ {
		dst[i] ^= key[i&3]
	}
	return b
}

// ---- raw TCP echo

// runTCPEcho is runEcho without WebSocket: the same connections, message size and
// window, each message -size bytes starting with its send time, written in one
// write per batch of returned tokens exactly as runEcho writes frames; the reader
// takes exactly -size bytes per message, through a buffer of the size runEcho's
// WebSocket reader has. A server that echoes the byte stream as it comes is the
// ceiling for any WebSocket echo on the same event loop.
func runTCPEcho() map[string]any {
	if *size < 8 {
		fail("-size must be >= 8")
	}
	addr := strings.TrimPrefix(*url, "tcp://")
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		addr = addr[:i]
	}
	cs := make([]net.Conn, *conns)
	for i := range cs {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			for _, c := range cs[:i] {
				_ = c.Close()
			}
			fail("dial: %v", err)
		}
		cs[i] = c
	}
	closeRaw := func() {
		for _, c := range cs {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
	}
	var measuring, stop atomic.Bool
	counts := make([]int64, *conns)
	hists := make([]*hist, *conns)
	var errs atomic.Int64
	for i, c := range cs {
		hists[i] = &hist{}
		tokens := make(chan struct{}, *inflight)
		for k := 0; k < *inflight; k++ {
			tokens <- struct{}{}
		}
		go func(c net.Conn) { // writer
			msg := bytes.Repeat([]byte{'e'}, *size)
			var out []byte
			for range tokens {
				n := 1
			more:
				for {
					select {
					case <-tokens:
						n++
					default:
						break more
					}
				}
				if stop.Load() {
					return
				}
				out = out[:0]
				for k := 0; k < n; k++ {
					binary.LittleEndian.PutUint64(msg, uint64(now()))
					out = append(out, msg...)
				}
				if _, err := c.Write(out); err != nil {
					return
				}
			}
		}(c)
		go func(i int, c net.Conn) { // reader
			r := bufio.NewReaderSize(c, echoReadBuffer())
			msg := make([]byte, *size)
			h := hists[i]
			for {
				if _, err := io.ReadFull(r, msg); err != nil {
					if !stop.Load() {
						errs.Add(1)
					}
					return
				}
				if measuring.Load() {
					h.add(now() - int64(binary.LittleEndian.Uint64(msg)))
					counts[i]++
				}
				tokens <- struct{}{}
			}
		}(i, c)
	}
	time.Sleep(seconds(*warmup))
	cpu := beginCPU()
	measuring.Store(true)
	time.Sleep(seconds(*duration))
	measuring.Store(false)
	out := map[string]any{}
	cpu.end(out)
	elapsed := float64(now()-cpu.t0) / 1e9
	stop.Store(true)
	var total int64
	all := &hist{}
	for i := range cs {
		total += counts[i]
		all.merge(hists[i])
	}
	closeRaw()
	out["conns"] = *conns
	out["size"] = *size
	out["inflight"] = *inflight
	out["msgs_per_s"] = float64(total) / elapsed
	out["p50_ms"] = all.quantile(0.50)
	out["p99_ms"] = all.quantile(0.99)
	out["conn_errors"] = errs.Load()
	if total == 0 && errs.Load() > 0 {
		out["error"] = "every connection failed before a message came back"
	}
	return out
}

// ---- chat

// A data line is: 'm', sender (2 digits), sequence (10 digits), send time (16 hex
// digits, ns since the generator started), then 'x' padding to -linesize bytes.
// A sync line starts with 'y'. No whitespace at either end, so a server that trims
// lines (the seed does) sends them back unchanged.

func putLine(b []byte, sender, seq int, ts int64) {
	b[0] = 'm'
	b[1] = byte('0' + sender/10)
	b[2] = byte('0' + sender%10)
	for i, v := 12, seq; i >= 3; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	const hexd = "0123456789abcdef"
	for i, v := 28, uint64(ts); i >= 13; i-- {
		b[i] = hexd[v&15]
		v >>= 4
	}
}

// hexValue is a byte's value as a lowercase hex digit, or -1.
var hexValue = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = int8(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = int8(c - 'a' + 10)
	}
	return t
}()

// parseTS is a data line's send time, or -1 if those 16 bytes are not lowercase hex.
// Every line delivered passes here (millions per second): a table and no branch per
// digit, where a switch per digit was 8 % of the generator.
func parseTS(l []byte) int64 {
	var v, bad int64
	for _, ch := range l[13:29] {
		x := int64(hexValue[ch])
		v = v<<4 | x&15
		bad |= x
	}
	if bad < 0 {
		return -1
	}
	return v
}

func parseSenderSeq(l []byte) (int, int) {
	s := int(l[1]-'0')*10 + int(l[2]-'0')
	q := 0
	for _, ch := range l[3:13] {
		q = q*10 + int(ch-'0')
	}
	return s, q
}

type receiver struct {
	h        hist
	total    atomic.Int64 // data lines received since the start
	inWindow int64        // data lines received while measuring (owner goroutine only)
	synced   atomic.Bool
	dropped  atomic.Bool // the server closed or reset the connection before we did
	bad      atomic.Int64
}

func runChat() map[string]any {
	if *lineSize < 32 || *lineSize >= 512 {
		fail("-linesize must be in [32, 512)")
	}
	if *senders < 1 || *senders > 99 {
		fail("-senders must be in [1, 99]")
	}
	nr, ns := *receivers, *senders
	setupStart := now()
	// Large read buffers: a coalescing server sends big batches, and the generator's
	// cost is mostly read syscalls, so fewer, larger reads keep it off the limit.
	rc, err := dialRaw(nr, 64*1024)
	if err != nil {
		closeRawConns(rc)
		fail("receivers: %v", err)
	}
	sc, err := dialRaw(ns, 64*1024)
	if err != nil {
		closeRawConns(rc)
		closeRawConns(sc)
		fail("senders: %v", err)
	}
	setupS := float64(now()-setupStart) / 1e9

	var measuring, stopping atomic.Bool
	recvs := make([]*receiver, nr+ns)
	acks := make([]chan struct{}, ns) // one token back per own line seen by a sender
	tokens := *window
	if *rate > 0 {
		tokens = 1 << 16 // open loop: the bound only keeps memory finite
	}
	for i := range acks {
		acks[i] = make(chan struct{}, tokens)
		for k := 0; k < tokens; k++ {
			acks[i] <- struct{}{}
		}
	}
	all := append(append([]*rawConn{}, rc...), sc...)
	for i, c := range all {
		r := &receiver{}
		recvs[i] = r
		own := -1
		if i >= nr {
			own = i - nr
		}
		go func(c *rawConn, r *receiver, own int) {
			for {
				data, err := c.next()
				if err != nil {
					if !stopping.Load() {
						r.dropped.Store(true)
					}
					return
				}
				t := now()
				meas := measuring.Load()
				var n int64
				for len(data) > 0 {
					j := bytes.IndexByte(data, '\n')
					var l []byte
					if j < 0 {
						l, data = data, nil
					} else {
						l, data = data[:j], data[j+1:]
					}
					if len(l) < 29 || l[0] != 'm' {
						if len(l) > 0 && l[0] == 'y' {
							r.synced.Store(true)
						} else {
							r.bad.Add(1)
						}
						continue
					}
					n++
					if meas {
						r.h.add(t - parseTS(l))
					}
					if own >= 0 {
						if s, _ := parseSenderSeq(l); s == own {
							select {
							case acks[own] <- struct{}{}:
							default:
							}
						}
					}
				}
				r.total.Add(n)
				if meas {
					r.inWindow += n
				}
			}
		}(c, r, own)
	}

	// Barrier: every client, senders included, must have seen a sync line, so the
	// server has registered all of them before any counted line is sent.
	syncMsg := append([]byte{'y'}, bytes.Repeat([]byte{'s'}, 31)...)
	if err := sc[0].send(0x1, syncMsg); err != nil {
		fail("sync send: %v", err)
	}
	syncDeadline := time.Now().Add(15 * time.Second)
	for {
		ok := true
		for _, r := range recvs {
			if !r.synced.Load() {
				ok = false
				break
			}
		}
		if ok {
			break
		}
		if time.Now().After(syncDeadline) {
			closeRawConns(all)
			fail("not every client saw the sync line within 15 s")
		}
		time.Sleep(5 * time.Millisecond)
	}

	sent := make([]atomic.Int64, ns)
	var stopSend atomic.Bool
	var swg sync.WaitGroup
	perSender := 0.0
	if *rate > 0 {
		perSender = *rate / float64(nr) / float64(ns)
	}
	for k, c := range sc {
		swg.Add(1)
		go func(k int, c *rawConn) {
			defer swg.Done()
			line := bytes.Repeat([]byte{'x'}, *lineSize)
			t0 := time.Now()
			for seq := 0; !stopSend.Load(); seq++ {
				if perSender > 0 {
					due := t0.Add(time.Duration(float64(seq) / perSender * 1e9))
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
				}
				select {
				case <-acks[k]:
				default: // window full: wait, but notice the end of the run
					select {
					case <-acks[k]:
					case <-time.After(100 * time.Millisecond):
						seq--
						continue
					}
				}
				if stopSend.Load() {
					return
				}
				putLine(line, k, seq, now())
				if err := c.send(0x1, line); err != nil {
					return
				}
				sent[k].Add(1)
			}
		}(k, c)
	}
	time.Sleep(seconds(*warmup))
	cpu := beginCPU()
	measuring.Store(true)
	time.Sleep(seconds(*duration))
	measuring.Store(false)
	out := map[string]any{}
	cpu.end(out)
	elapsed := float64(now()-cpu.t0) / 1e9
	stopSend.Store(true)
	swg.Wait()

	var totalSent int64
	for k := range sent {
		totalSent += sent[k].Load()
	}
	expected := totalSent * int64(nr)
	received := func() int64 {
		var s int64
		for _, r := range recvs[:nr] {
			s += r.total.Load()
		}
		return s
	}
	// Wait for lines still on their way: until all arrived, or nothing arrived for
	// -drain seconds (a slow server still sending is not counted as losing lines),
	// or 20 s in all.
	last, lastChange := received(), time.Now()
	hardStop := time.Now().Add(20 * time.Second)
	for last < expected && time.Since(lastChange) < seconds(*drain) && time.Now().Before(hardStop) {
		time.Sleep(10 * time.Millisecond)
		if n := received(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	stopping.Store(true)
	got := received()
	closeRawConns(all)

	h := &hist{}
	var inWindow int64
	evicted, sendersDropped, bad := 0, 0, int64(0)
	for i, r := range recvs {
		bad += r.bad.Load()
		if i < nr {
			h.merge(&r.h)
			inWindow += r.inWindow
			if r.dropped.Load() {
				evicted++
			}
		} else if r.dropped.Load() {
			sendersDropped++
		}
	}
	out["receivers"] = nr
	out["senders"] = ns
	out["offered_deliveries_per_s"] = *rate
	out["lines_per_s"] = float64(inWindow) / elapsed
	out["p50_ms"] = h.quantile(0.50)
	out["p99_ms"] = h.quantile(0.99)
	out["sent"] = totalSent
	out["expected"] = expected
	out["received"] = got
	out["lost"] = expected - got
	out["evicted"] = evicted
	out["senders_dropped"] = sendersDropped
	out["bad_lines"] = bad
	out["setup_s"] = setupS
	return out
}

// ---- raw chat connections

// rawConn is a chat connection spoken here rather than through gorilla: the handshake
// of the connect mode, and frames read straight from the socket into one buffer.
// With 1,000 receivers taking in millions of lines per second, gorilla's NextReader and
// the copy from its buffer into each message were a tenth of the generator's core, and
// the epws row was the generator's limit, not the server's.
type rawConn struct {
	tc  *net.TCPConn
	mu  sync.Mutex // one writer at a time: a sender's lines and the reader's pongs
	out []byte     // frames being written (under mu)
	buf []byte     // buf[r:w] is read and not yet parsed
	r   int
	w   int
	msg []byte // a fragmented message being put together
}

// dialRaw opens n chat connections with at most dialConc handshakes at a time; each
// reads through a buffer of bufSize bytes (it grows for a larger frame).
func dialRaw(n, bufSize int) ([]*rawConn, error) {
	hostport, request := upgradeRequest()
	out := make([]*rawConn, n)
	_, err := dialEach(n, func(i int) error {
		buf := make([]byte, bufSize)
		tc, left, err := handshakeOnly(hostport, request, buf)
		if err != nil {
			return err
		}
		if err := tc.SetDeadline(time.Time{}); err != nil {
			hardCloseTCP(tc)
			return err
		}
		out[i] = &rawConn{tc: tc, buf: buf, w: left}
		return nil
	})
	return out, err
}

func closeRawConns(cs []*rawConn) {
	for _, c := range cs {
		if c != nil {
			hardCloseTCP(c.tc)
		}
	}
}

// send writes one final frame of opcode with payload, masked (a client's frame).
func (c *rawConn) send(opcode byte, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = appendMaskedFrame(c.out[:0], opcode, payload)
	_, err := c.tc.Write(c.out)
	return err
}

// errClosed is what next returns when the server sends a close frame.
var errClosed = fmt.Errorf("the server closed the connection")

// next returns the next data message (text or binary), valid until the following
// call. Pings are answered, pongs skipped; a close frame ends the connection
// (errClosed). Frames must be a server's: unmasked, no reserved bits.
func (c *rawConn) next() ([]byte, error) {
	for {
		b := c.buf[c.r:c.w]
		if len(b) >= 2 {
			b0, b1 := b[0], b[1]
			if b1&0x80 != 0 || b0&0x70 != 0 {
				return nil, fmt.Errorf("bad frame header %02x %02x", b0, b1)
			}
			hdr, n := 2, uint64(b1&0x7f)
			switch n {
			case 126:
				hdr = 4
				if len(b) >= 4 {
					n = uint64(binary.BigEndian.Uint16(b[2:4]))
				}
			case 127:
				hdr = 10
				if len(b) >= 10 {
					n = binary.BigEndian.Uint64(b[2:10])
				}
			}
			if n > 1<<26 {
				return nil, fmt.Errorf("frame of %d bytes", n)
			}
			if len(b) >= hdr && uint64(len(b)-hdr) >= n {
				payload := b[hdr : hdr+int(n)]
				c.r += hdr + int(n)
				fin, op := b0&0x80 != 0, b0&0x0f
				switch {
				case op == 0x8:
					return nil, errClosed
				case op == 0x9:
					if err := c.send(0xA, payload); err != nil {
						return nil, err
					}
				case op == 0xA:
				case op == 0x0 || (op == 0x1 || op == 0x2) && !fin:
					if op != 0 {
						c.msg = c.msg[:0]
					}
					c.msg = append(c.msg, payload...)
					if fin {
						return c.msg, nil
					}
				case op == 0x1 || op == 0x2:
					return payload, nil
				default:
					return nil, fmt.Errorf("unknown opcode %d", op)
				}
				continue
			}
			if need := hdr + int(n); len(b) >= hdr && need > len(c.buf) {
				nb := make([]byte, need)
				c.w = copy(nb, b)
				c.r, c.buf = 0, nb
			}
		}
		// Need more: keep the unparsed tail at the front and read behind it.
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		}
		m, err := c.tc.Read(c.buf[c.w:])
		c.w += m
		if m == 0 && err != nil {
			return nil, err
		}
	}
}

// ---- idle

func runIdle() map[string]any {
	t0 := now()
	cs, failed, err := dialAll(*conns, 1024)
	setup := float64(now()-t0) / 1e9
	open := 0
	var dropped atomic.Int64
	for _, c := range cs {
		if c == nil {
			continue
		}
		open++
		go func(c *websocket.Conn) { // answer pings, notice a close
			for {
				if _, _, err := c.NextReader(); err != nil {
					dropped.Add(1)
					return
				}
			}
		}(c)
	}
	ready := map[string]any{"phase": "ready", "open": open, "failed": failed, "setup_s": setup}
	if err != nil {
		ready["dial_error"] = err.Error()
	}
	emit(ready)
	released := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(released)
	}()
	select {
	case <-released:
	case <-time.After(seconds(*hold)):
	}
	d := dropped.Load()
	closeAll(cs)
	return map[string]any{"open": open, "failed": failed, "setup_s": setup, "dropped_while_held": d}
}

// ---- connect

// The connect mode speaks the opening handshake itself rather than through gorilla's
// Dialer: the scenario measures the server, and the Dialer's own work (a key from
// crypto/rand, an http.Request, bufio buffers, http.ReadResponse) made the generator
// the limit before the faster servers were. The request is the same every time (the
// server hashes whatever key it gets, so its work is the same) and the answer is
// checked for what RFC 6455 requires: status 101 and the accept value of that key.
const (
	connectKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	connectAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" // RFC 6455 section 1.3's example
)

// plainDialer is handshakeOnly's: no TCP keepalive (Go's default sets it with three
// setsockopt calls per connection, 7 % of the generator's core in the connect mode,
// for connections that live a few milliseconds or a benchmark's few seconds).
var plainDialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}

// handshakeOnly opens a TCP connection to hostport and completes the opening handshake
// for path, reading the answer into buf. It returns the connection with a 10-second
// deadline still set, and how many bytes of buf follow the answer's head (frames the
// server sent right behind its 101).
func handshakeOnly(hostport string, request []byte, buf []byte) (*net.TCPConn, int, error) {
	c, err := plainDialer.Dial("tcp", hostport)
	if err != nil {
		return nil, 0, err
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write(request); err != nil {
		hardCloseTCP(tc)
		return nil, 0, err
	}
	n := 0
	for {
		m, err := tc.Read(buf[n:])
		n += m
		if end := bytes.Index(buf[:n], []byte("\r\n\r\n")); end >= 0 {
			if err := checkSwitch(buf[:end]); err != nil {
				hardCloseTCP(tc)
				return nil, 0, err
			}
			return tc, copy(buf, buf[end+4:n]), nil
		}
		if err != nil || n == len(buf) {
			hardCloseTCP(tc)
			if err == nil {
				err = fmt.Errorf("response head over %d bytes", len(buf))
			}
			return nil, 0, err
		}
	}
}

// upgradeRequest is the opening handshake connect and chat send for -url.
func upgradeRequest() (hostport string, request []byte) {
	if !strings.HasPrefix(*url, "ws://") {
		fail("-url must be ws://host:port/path")
	}
	hostport, path, _ := strings.Cut(strings.TrimPrefix(*url, "ws://"), "/")
	return hostport, []byte("GET /" + path + " HTTP/1.1\r\nHost: " + hostport +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + connectKey +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

// checkSwitch accepts a response head (without its blank line) that switches protocols
// with the right Sec-WebSocket-Accept.
func checkSwitch(head []byte) error {
	lines := strings.Split(string(head), "\r\n")
	if !strings.HasPrefix(lines[0], "HTTP/1.1 101") {
		return fmt.Errorf("handshake refused: %q", lines[0])
	}
	for _, line := range lines[1:] {
		name, value, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(name, "Sec-WebSocket-Accept") {
			if strings.TrimSpace(value) != connectAccept {
				return fmt.Errorf("wrong Sec-WebSocket-Accept %q", value)
			}
			return nil
		}
	}
	return fmt.Errorf("no Sec-WebSocket-Accept in the 101")
}

func hardCloseTCP(tc *net.TCPConn) {
	_ = tc.SetLinger(0) // no TIME_WAIT: thousands of runs must not exhaust ports
	_ = tc.Close()
}

func runConnect() map[string]any {
	hostport, request := upgradeRequest()
	var measuring, stop atomic.Bool
	counts := make([]int64, *workers)
	hists := make([]*hist, *workers)
	var errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		hists[w] = &hist{}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 4096)
			for !stop.Load() {
				t := now()
				c, _, err := handshakeOnly(hostport, request, buf)
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if measuring.Load() {
					hists[w].add(now() - t)
					counts[w]++
				}
				hardCloseTCP(c)
			}
		}(w)
	}
	time.Sleep(seconds(*warmup))
	cpu := beginCPU()
	measuring.Store(true)
	time.Sleep(seconds(*duration))
	measuring.Store(false)
	out := map[string]any{}
	cpu.end(out)
	elapsed := float64(now()-cpu.t0) / 1e9
	stop.Store(true)
	wg.Wait()
	var total int64
	all := &hist{}
	for w := range counts {
		total += counts[w]
		all.merge(hists[w])
	}
	out["workers"] = *workers
	out["handshakes_per_s"] = float64(total) / elapsed
	out["p50_ms"] = all.quantile(0.50)
	out["p99_ms"] = all.quantile(0.99)
	out["errors"] = errs.Load()
	if msg, ok := firstErr.Load().(string); ok {
		out["first_error"] = msg
	}
	return out
}

// ---- scale

// The scale mode is one of several generator processes that together hold N idle
// epws.chat.v1 connections to epws-chat (a process may hold fewer descriptors than
// N; benchmarks/scale.py starts as many as needed, each from its own loopback source
// address). It connects -conns clients to room -room, reports, then obeys commands,
// one per line on stdin, answering each with one JSON line on stdout:
//
//	expect K       count arrivals of fan-out message K on every idle connection; a
//	               line {"phase":"fanout"} follows when all have it (or 30 s passed)
//	fanout K       send fan-out message K on the first idle connection (its wall
//	               clock send time is in the text, so other processes can time it)
//	talkers M      open M more connections, in room "talk"
//	talk D RATE    the talkers send RATE messages/s in all, round robin, for D
//	               seconds; delivery latency on every talker (all of them receive)
//	stats          pings answered and connections dropped so far
//	quit           close everything and exit (so do EOF on stdin and -deadline)

var (
	srcAddr  = flag.String("srcaddr", "", "scale: local address to dial from (e.g. 127.0.0.2)")
	room     = flag.String("room", "all", "scale: room of the idle connections")
	emitLock sync.Mutex
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind() to a source
// address leaves the port to connect(), which then needs only the 4-tuple to be
// unique, so each source address has the whole ephemeral range for one server port.
const ipBindAddressNoPort = 24

func emitLocked(v map[string]any) {
	emitLock.Lock()
	defer emitLock.Unlock()
	emit(v)
}

type scaleConn struct {
	c      *websocket.Conn
	joined atomic.Bool
	h      *hist // talkers only: delivery latency (owner goroutine while measuring)
	got    int64 // talkers: lines received while measuring (owner goroutine)
}

type scaleState struct {
	pings, dropped, bad atomic.Int64
	firstDrop           atomic.Value // why the first dropped connection ended (string)
	dropAt              atomic.Int64 // now() of the first drop
	stopping            atomic.Bool
	fanSeq              atomic.Int64 // the fan-out message being counted (0: none)
	fanGot              atomic.Int64
	fanFirst, fanLast   atomic.Int64 // wall-clock ns of the first and last arrival
	talkMeasuring       atomic.Bool
	talkStart           atomic.Int64      // now() when the talk began
	talkMaxBySecond     [120]atomic.Int64 // worst delivery latency (ns) per second of the talk
}

func scaleDialer(src string) *websocket.Dialer {
	nd := &net.Dialer{Timeout: 30 * time.Second}
	if src != "" {
		ip := net.ParseIP(src)
		if ip == nil || !ip.IsLoopback() {
			fail("-srcaddr must be a loopback address: %q", src)
		}
		nd.LocalAddr = &net.TCPAddr{IP: ip}
		nd.Control = func(network, address string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return &websocket.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   512, // idle connections: small buffers, write buffers shared
		WriteBufferSize:  512,
		WriteBufferPool:  &sync.Pool{},
		Subprotocols:     []string{"epws.chat.v1"},
	}
}

// textOf returns the "text" field of one epws.chat.v1 JSON line (the generator's own
// texts have no escapes), or nil.
func textOf(line []byte) []byte {
	const key = `"text":"`
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return nil
	}
	rest := line[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}

func (st *scaleState) read(sc *scaleConn, talker bool) {
	c := sc.c
	c.SetPingHandler(func(data string) error {
		st.pings.Add(1)
		err := c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(30*time.Second))
		// As gorilla's own ping handler: a pong that could not be written in time (a
		// starved generator) is not a reason to stop reading; the server's pong wait
		// decides. Returning the error would end this reader and leave the connection
		// to be dropped by the server as if it had gone silent.
		if ne, ok := err.(net.Error); err == websocket.ErrCloseSent || (ok && ne.Timeout()) {
			return nil
		}
		return err
	})
	buf := make([]byte, 512)
	var data []byte
	var err error
	for {
		buf, data, err = readInto(c, buf)
		if err != nil {
			if !st.stopping.Load() {
				if st.dropped.Add(1) == 1 {
					st.dropAt.Store(now())
				}
				st.firstDrop.CompareAndSwap(nil, err.Error())
			}
			hardClose(c) // release the descriptor: the server is done with it
			return
		}
		t, wall := now(), time.Now().UnixNano()
		for len(data) > 0 {
			var l []byte
			if j := bytes.IndexByte(data, '\n'); j < 0 {
				l, data = data, nil
			} else {
				l, data = data[:j], data[j+1:]
			}
			if bytes.HasPrefix(l, []byte(`{"type"`)) && bytes.Contains(l[:20], []byte(`"hello"`)) {
				sc.joined.Store(true)
				continue
			}
			text := textOf(l)
			if len(text) < 3 || text[1] != ':' {
				continue // history, errors: not ours to count
			}
			f := bytes.SplitN(text[2:], []byte{':'}, 2)
			if len(f) != 2 {
				st.bad.Add(1)
				continue
			}
			switch text[0] {
			case 'f': // f:SEQ:WALLNS
				seq, _ := strconv.ParseInt(string(f[0]), 10, 64)
				if seq != 0 && seq == st.fanSeq.Load() {
					st.fanFirst.CompareAndSwap(0, wall)
					for {
						last := st.fanLast.Load()
						if wall <= last || st.fanLast.CompareAndSwap(last, wall) {
							break
						}
					}
					st.fanGot.Add(1)
				}
			case 't': // t:SEQ:MONONS (sent by this process)
				if talker && sc.h != nil && st.talkMeasuring.Load() {
					ts, err := strconv.ParseInt(string(f[1]), 16, 64)
					if err != nil {
						st.bad.Add(1)
						continue
					}
					sc.h.add(t - ts)
					if sec := (ts - st.talkStart.Load()) / 1e9; sec >= 0 && sec < int64(len(st.talkMaxBySecond)) {
						m := &st.talkMaxBySecond[sec]
						for lat := t - ts; ; {
							cur := m.Load()
							if lat <= cur || m.CompareAndSwap(cur, lat) {
								break
							}
						}
					}
					atomic.AddInt64(&sc.got, 1)
				}
			}
		}
	}
}

// dialScale opens n connections to room (at most -dialconc at a time) and waits,
// bounded, until each has its hello line: then the server has registered it.
func (st *scaleState) dialScale(n int, roomName string, talker bool) ([]*scaleConn, int, float64, string) {
	d := scaleDialer(*srcAddr)
	u := *url + "?room=" + roomName
	t0 := now()
	out := make([]*scaleConn, 0, n)
	var mu sync.Mutex
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, *dialConc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := d.Dial(u, nil)
			if err == nil && c.Subprotocol() != "epws.chat.v1" {
				err = fmt.Errorf("subprotocol %q", c.Subprotocol())
				hardClose(c)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			sc := &scaleConn{c: c}
			mu.Lock()
			out = append(out, sc)
			mu.Unlock()
			go st.read(sc, talker)
		}()
	}
	wg.Wait()
	giveUp := time.Now().Add(30 * time.Second)
	for time.Now().Before(giveUp) {
		all := true
		for _, sc := range out {
			if !sc.joined.Load() {
				all = false
				break
			}
		}
		if all {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	setup := float64(now()-t0) / 1e9
	msg, _ := firstErr.Load().(string)
	return out, int(failed.Load()), setup, msg
}

func countJoined(cs []*scaleConn) int {
	n := 0
	for _, sc := range cs {
		if sc.joined.Load() {
			n++
		}
	}
	return n
}

func chatLine(text string) []byte {
	return []byte(`{"type":"message","text":"` + text + `"}`)
}

func runScale() map[string]any {
	st := &scaleState{}
	idle, failed, setup, firstErr := st.dialScale(*conns, *room, false)
	ready := map[string]any{
		"phase": "ready", "open": len(idle), "joined": countJoined(idle),
		"failed": failed, "setup_s": setup,
	}
	if firstErr != "" {
		ready["first_error"] = firstErr
	}
	emitLocked(ready)
	var talkers []*scaleConn
	closeEverything := func() {
		st.stopping.Store(true)
		for _, sc := range idle {
			hardClose(sc.c)
		}
		for _, sc := range talkers {
			hardClose(sc.c)
		}
	}
	lines := make(chan string)
	go func() {
		r := bufio.NewReader(os.Stdin)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- strings.TrimSpace(l)
		}
	}()
	for l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		arg := func(i int) float64 {
			if i >= len(f) {
				fail("command %q needs %d arguments", l, i)
			}
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				fail("command %q: %v", l, err)
			}
			return v
		}
		switch f[0] {
		case "expect":
			seq := int64(arg(1))
			st.fanSeq.Store(0)
			st.fanGot.Store(0)
			st.fanFirst.Store(0)
			st.fanLast.Store(0)
			st.fanSeq.Store(seq)
			want := int64(countJoined(idle))
			go func() {
				giveUp := time.Now().Add(30 * time.Second)
				for st.fanGot.Load() < want && time.Now().Before(giveUp) {
					time.Sleep(2 * time.Millisecond)
				}
				emitLocked(map[string]any{
					"phase": "fanout", "seq": seq, "got": st.fanGot.Load(), "want": want,
					"first_ns": st.fanFirst.Load(), "last_ns": st.fanLast.Load(),
				})
			}()
		case "fanout":
			seq := int64(arg(1))
			if len(idle) == 0 {
				fail("fanout: no connection to send from")
			}
			sent := time.Now().UnixNano()
			err := idle[0].c.WriteMessage(websocket.TextMessage, chatLine(fmt.Sprintf("f:%d:%d", seq, sent)))
			out := map[string]any{"phase": "sent", "seq": seq, "send_ns": sent}
			if err != nil {
				out["error"] = err.Error()
			}
			emitLocked(out)
		case "talkers":
			var tf int
			var terr string
			var ts float64
			talkers, tf, ts, terr = st.dialScale(int(arg(1)), "talk", true)
			out := map[string]any{
				"phase": "talkers", "open": len(talkers), "joined": countJoined(talkers),
				"failed": tf, "setup_s": ts,
			}
			if terr != "" {
				out["first_error"] = terr
			}
			emitLocked(out)
		case "talk":
			emitLocked(st.talk(talkers, arg(1), arg(2)))
		case "stats":
			out := map[string]any{
				"phase": "stats", "pings": st.pings.Load(), "dropped": st.dropped.Load(),
				"bad_lines": st.bad.Load(), "open": len(idle) + len(talkers),
			}
			if why, ok := st.firstDrop.Load().(string); ok {
				out["first_drop"] = why
				out["first_drop_s"] = float64(st.dropAt.Load()) / 1e9
			}
			emitLocked(out)
		case "quit":
			closeEverything()
			return map[string]any{"phase": "done", "pings": st.pings.Load(), "dropped": st.dropped.Load()}
		default:
			fail("unknown command %q", l)
		}
	}
	closeEverything() // stdin closed: the driver is gone
	return map[string]any{"phase": "done", "stdin": "closed"}
}

// talk paces rate messages/s over the talkers, round robin, for d seconds, then waits
// (bounded) for the deliveries still on their way and reports their latency.
func (st *scaleState) talk(talkers []*scaleConn, d, rate float64) map[string]any {
	if len(talkers) == 0 || rate <= 0 || d <= 0 {
		fail("talk: needs talkers, a duration and a rate")
	}
	for _, sc := range talkers {
		sc.h = &hist{} // 30 KB each: talkers only, never the idle connections
		atomic.StoreInt64(&sc.got, 0)
	}
	received := func() int64 { // read racily while running; exact once the readers are idle
		var s int64
		for _, sc := range talkers {
			s += atomic.LoadInt64(&sc.got)
		}
		return s
	}
	for i := range st.talkMaxBySecond {
		st.talkMaxBySecond[i].Store(0)
	}
	st.talkStart.Store(now())
	st.talkMeasuring.Store(true)
	cpu := beginCPU()
	t0 := time.Now()
	end := t0.Add(seconds(d))
	var sent int64
	var sendErrs int64
	for seq := 0; ; seq++ {
		due := t0.Add(time.Duration(float64(seq) / rate * 1e9))
		if !due.Before(end) {
			break
		}
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		sc := talkers[seq%len(talkers)]
		line := chatLine(fmt.Sprintf("t:%d:%x", seq, now()))
		if err := sc.c.WriteMessage(websocket.TextMessage, line); err != nil {
			sendErrs++
			continue
		}
		sent++
	}
	out := map[string]any{}
	cpu.end(out)
	expected := sent * int64(len(talkers))
	last, lastChange := received(), time.Now()
	hardStop := time.Now().Add(20 * time.Second)
	for last < expected && time.Since(lastChange) < 3*time.Second && time.Now().Before(hardStop) {
		time.Sleep(10 * time.Millisecond)
		if n := received(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	st.talkMeasuring.Store(false)
	time.Sleep(50 * time.Millisecond) // readers finish the batch in hand
	h := &hist{}
	for _, sc := range talkers {
		h.merge(sc.h)
	}
	out["phase"] = "talk"
	out["talkers"] = len(talkers)
	out["rate"] = rate
	out["seconds"] = d
	out["sent"] = sent
	out["send_errors"] = sendErrs
	out["expected"] = expected
	out["received"] = received()
	out["p50_ms"] = h.quantile(0.50)
	out["p99_ms"] = h.quantile(0.99)
	out["p999_ms"] = h.quantile(0.999)
	out["max_ms"] = h.quantile(1.0)
	bySecond := []float64{}
	for i := 0; i < int(d+0.999) && i < len(st.talkMaxBySecond); i++ {
		bySecond = append(bySecond, float64(st.talkMaxBySecond[i].Load())/1e6)
	}
	out["max_ms_by_second"] = bySecond // by send time: shows the keepalive sweeps
	return out
}
