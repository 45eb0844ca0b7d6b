// Peer server: the classic gorilla/websocket chat Hub/Client, speaking the shootout protocol.
//
// This is the design trio_hub started from (gorilla/websocket's examples/chat): one hub
// goroutine owns the set of clients and serves three channels (register, unregister,
// broadcast); every client has a readPump and a writePump goroutine and a send buffer of
// 256 messages; a client whose buffer is full is dropped. Pings every 54 s, pong wait
// 60 s, write deadline 10 s. Two changes for the benchmark protocol, both small:
//   - each queued message is its own WebSocket frame (the chat example joins queued
//     messages with newlines into one frame, which the shootout protocol does not allow);
//   - the hub, after queueing a broadcast to every client, queues the sender's
//     broadcastResult with the listener count it just used.
//
// Written for trio_hub's bench; built in GOPATH mode from Debian's
// golang-github-gorilla-websocket-dev (see bench/run.py), no module download.
package main

import "encoding/json"

// outbound is one broadcast on its way through the hub.
type outbound struct {
	sender  *Client
	frame   []byte
	payload json.RawMessage
}

// Hub maintains the set of active clients and broadcasts messages to them.
type Hub struct {
	clients    map[*Client]bool
	broadcast  chan outbound
	register   chan *Client
	unregister chan *Client
}

func newHub() *Hub {
	return &Hub{
		broadcast:  make(chan outbound),
		register:   make(chan *Client),
		unregister: make(chan *Client),
		clients:    make(map[*Client]bool),
	}
}

func (h *Hub) drop(client *Client) {
	if _, ok := h.clients[client]; ok {
		delete(h.clients, client)
		close(client.send)
	}
}

func (h *Hub) run() {
	for {
		select {
		case client := <-h.register:
			h.clients[client] = true
		case client := <-h.unregister:
			h.drop(client)
		case message := <-h.broadcast:
			listeners := len(h.clients)
			for client := range h.clients {
				select {
				case client.send <- message.frame:
				default: // slow client: its buffer is full
					h.drop(client)
				}
			}
			if _, ok := h.clients[message.sender]; ok {
				result, _ := json.Marshal(struct {
					Type          string          `json:"type"`
					Payload       json.RawMessage `json:"payload"`
					ListenerCount int             `json:"listenerCount"`
				}{"broadcastResult", message.payload, listeners})
				select {
				case message.sender.send <- result:
				default:
					h.drop(message.sender)
				}
			}
		}
	}
}
