package main

import (
	"encoding/json"
	"log"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

const (
	writeWait      = 10 * time.Second    // time allowed to write a message to the peer
	pongWait       = 60 * time.Second    // time allowed to read the next pong from the peer
	pingPeriod     = (pongWait * 9) / 10 // 54 s: send pings with this period, under pongWait
	maxMessageSize = 1 << 20
	sendBuffer     = 256
)

var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

// Client is a middleman between the websocket connection and the hub.
type Client struct {
	hub  *Hub
	conn *websocket.Conn
	send chan []byte // buffered channel of outbound frames
}

type envelope struct {
	Type    *string         `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

func errorFrame(code, detail string) []byte {
	frame, _ := json.Marshal(map[string]interface{}{
		"type": "error", "payload": map[string]string{"code": code, "detail": detail},
	})
	return frame
}

// reply answers one inbound text message; it queues broadcasts through the hub.
func (c *Client) reply(message []byte) {
	var in envelope
	if err := json.Unmarshal(message, &in); err != nil {
		var probe interface{}
		if json.Unmarshal(message, &probe) != nil {
			c.queue(errorFrame("invalid_json", "message is not JSON"))
		} else {
			c.queue(errorFrame("invalid_envelope", "expected an object with a string 'type'"))
		}
		return
	}
	if in.Type == nil {
		c.queue(errorFrame("invalid_envelope", "expected an object with a string 'type'"))
		return
	}
	payload := in.Payload
	if payload == nil {
		payload = json.RawMessage("null")
	}
	switch *in.Type {
	case "echo":
		frame, _ := json.Marshal(struct {
			Type    string          `json:"type"`
			Payload json.RawMessage `json:"payload"`
		}{"echo", payload})
		c.queue(frame)
	case "broadcast":
		frame, _ := json.Marshal(struct {
			Type    string          `json:"type"`
			Payload json.RawMessage `json:"payload"`
		}{"broadcast", payload})
		c.hub.broadcast <- outbound{sender: c, frame: frame, payload: payload}
	default:
		c.queue(errorFrame("unknown_type", "unknown message type "+*in.Type))
	}
}

// queue sends a reply to this client alone. Only the hub may close c.send, so a reply
// goes through the hub's broadcast path semantics: never block the reader on it.
func (c *Client) queue(frame []byte) {
	defer func() { _ = recover() }() // c.send closed by the hub: the client is gone
	select {
	case c.send <- frame:
	default:
	}
}

// readPump pumps messages from the websocket connection to the hub.
func (c *Client) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		kind, message, err := c.conn.ReadMessage()
		if err != nil {
			if websocket.IsUnexpectedCloseError(err, websocket.CloseGoingAway, websocket.CloseNormalClosure) {
				log.Printf("error: %v", err)
			}
			break
		}
		if kind != websocket.TextMessage {
			c.conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseUnsupportedData, ""), time.Now().Add(writeWait))
			break
		}
		c.reply(message)
	}
}

// writePump pumps messages from the hub to the websocket connection, one frame each.
func (c *Client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case message, ok := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				// The hub closed the channel.
				c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := c.conn.WriteMessage(websocket.TextMessage, message); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

// serveWs handles websocket requests from the peer.
func serveWs(hub *Hub, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Println(err)
		return
	}
	client := &Client{hub: hub, conn: conn, send: make(chan []byte, sendBuffer)}
	client.hub.register <- client
	go client.writePump()
	go client.readPump()
}
