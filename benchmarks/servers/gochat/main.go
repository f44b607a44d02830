// Command gochat is a reference server for the benchmarks: the seed's chat design
// (one hub goroutine owning the clients, a read pump and a write pump per client,
// a 256-message send queue, eviction when it is full, coalescing of queued messages
// into one "\n"-joined message) and an echo server, written for this folder with
// Debian's gorilla/websocket. It shows where a compiled server on one core stands,
// and it calibrates the load generator: it is not one of the compared Python peers.
package main

import (
	"bytes"
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

const (
	writeWait      = 10 * time.Second
	pongWait       = 60 * time.Second
	pingPeriod     = pongWait * 9 / 10
	maxMessageSize = 512
	sendQueue      = 256
)

type client struct {
	conn *websocket.Conn
	send chan []byte
}

type hub struct {
	clients    map[*client]bool
	broadcast  chan []byte
	register   chan *client
	unregister chan *client
}

func (h *hub) run() {
	for {
		select {
		case c := <-h.register:
			h.clients[c] = true
		case c := <-h.unregister:
			if h.clients[c] {
				delete(h.clients, c)
				close(c.send)
			}
		case m := <-h.broadcast:
			for c := range h.clients {
				select {
				case c.send <- m:
				default: // queue full: the client is stuck or too slow
					delete(h.clients, c)
					close(c.send)
				}
			}
		}
	}
}

func (c *client) readPump(h *hub) {
	defer func() {
		h.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	_ = c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { return c.conn.SetReadDeadline(time.Now().Add(pongWait)) })
	for {
		_, m, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		h.broadcast <- bytes.TrimSpace(bytes.ReplaceAll(m, []byte{'\n'}, []byte{' '}))
	}
}

func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case m, ok := <-c.send:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				_ = c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			w, err := c.conn.NextWriter(websocket.TextMessage)
			if err != nil {
				return
			}
			_, _ = w.Write(m)
			for i, n := 0, len(c.send); i < n; i++ { // everything queued now, one message
				_, _ = w.Write([]byte{'\n'})
				_, _ = w.Write(<-c.send)
			}
			if err := w.Close(); err != nil {
				return
			}
		case <-ticker.C:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func main() {
	kind := flag.String("kind", "echo", "echo | chat")
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	chatUpgrader := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}
	echoUpgrader := websocket.Upgrader{ReadBufferSize: 32 * 1024, WriteBufferSize: 32 * 1024}
	h := &hub{
		clients:    map[*client]bool{},
		broadcast:  make(chan []byte),
		register:   make(chan *client),
		unregister: make(chan *client),
	}
	go h.run()
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if *kind == "chat" {
			conn, err := chatUpgrader.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			c := &client{conn: conn, send: make(chan []byte, sendQueue)}
			h.register <- c
			go c.writePump()
			go c.readPump(h)
			return
		}
		conn, err := echoUpgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			t, m, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(t, m); err != nil {
				return
			}
		}
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
