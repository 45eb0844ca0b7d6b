// Peer server: plain gorilla/websocket in the websocket-shootout style.
//
// One goroutine per connection reads; a broadcast is written by the sender's own
// goroutine straight to every connection, under a read lock on the connection set and
// each connection's write mutex (gorilla allows one writer at a time), then the sender
// gets its broadcastResult. No hub goroutine, no send buffers: a slow connection slows
// the broadcaster (bounded by the 10 s write deadline). The frame is encoded once per
// broadcast, like every other peer. Written for trio_hub's bench; built in GOPATH mode
// from Debian's golang-github-gorilla-websocket-dev (see bench/run.py).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

const writeWait = 10 * time.Second

type conn struct {
	ws *websocket.Conn
	mu sync.Mutex // gorilla: one concurrent writer per connection
}

func (c *conn) write(frame []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ws.SetWriteDeadline(time.Now().Add(writeWait))
	return c.ws.WriteMessage(websocket.TextMessage, frame)
}

type server struct {
	mu    sync.RWMutex
	conns map[*conn]struct{}
}

type envelope struct {
	Type    *string         `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

type typed struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

func errorFrame(code, detail string) []byte {
	frame, _ := json.Marshal(map[string]interface{}{
		"type": "error", "payload": map[string]string{"code": code, "detail": detail},
	})
	return frame
}

func (s *server) handle(c *conn, message []byte) {
	var in envelope
	if err := json.Unmarshal(message, &in); err != nil || in.Type == nil {
		var probe interface{}
		if json.Unmarshal(message, &probe) != nil {
			c.write(errorFrame("invalid_json", "message is not JSON"))
		} else {
			c.write(errorFrame("invalid_envelope", "expected an object with a string 'type'"))
		}
		return
	}
	payload := in.Payload
	if payload == nil {
		payload = json.RawMessage("null")
	}
	switch *in.Type {
	case "echo":
		frame, _ := json.Marshal(typed{"echo", payload})
		c.write(frame)
	case "broadcast":
		frame, _ := json.Marshal(typed{"broadcast", payload})
		s.mu.RLock()
		listeners := len(s.conns)
		for other := range s.conns {
			other.write(frame) // a failed write shows up in that connection's reader
		}
		s.mu.RUnlock()
		result, _ := json.Marshal(struct {
			Type          string          `json:"type"`
			Payload       json.RawMessage `json:"payload"`
			ListenerCount int             `json:"listenerCount"`
		}{"broadcastResult", payload, listeners})
		c.write(result)
	default:
		c.write(errorFrame("unknown_type", "unknown message type "+*in.Type))
	}
}

var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

func (s *server) serveWs(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Println(err)
		return
	}
	c := &conn{ws: ws}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		ws.Close()
	}()
	for {
		kind, message, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if kind != websocket.TextMessage {
			c.mu.Lock()
			ws.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseUnsupportedData, ""), time.Now().Add(writeWait))
			c.mu.Unlock()
			return
		}
		s.handle(c, message)
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to bind")
	port := flag.Int("port", 0, "port to bind, 0 for any free one")
	flag.Parse()
	s := &server{conns: make(map[*conn]struct{})}
	listener, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "listening on ws://%s:%d/\n", *host, listener.Addr().(*net.TCPAddr).Port)
	http.HandleFunc("/", s.serveWs)
	log.Fatal(http.Serve(listener, nil))
}
