#!/usr/bin/env python3
"""One create through a gateway and its event over a WebSocket (a plain socket client, no
library): the round trip the image checks ask of a deployment.

Usage: scripts/ws-roundtrip.py PORT TOKEN BOARD   (exit 0 when the created event arrives, seq 1)"""
import base64, json, os, socket, struct, sys, urllib.request
port, token, board = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /ws?board_id={board} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks", method="POST",
    data=json.dumps({"board_id": board, "title": "from a container"}).encode(),
    headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
task = json.load(urllib.request.urlopen(req, timeout=10))
def exact(n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        assert chunk, "connection closed"
        b += chunk
    return b
while True:
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126: n = struct.unpack(">H", exact(2))[0]
    elif n == 127: n = struct.unpack(">Q", exact(8))[0]
    payload = exact(n)
    if b0 & 0x0F == 1:
        event = json.loads(payload)
        if event.get("type") != "presence":  # who is viewing: not an event
            break
assert event["type"] == "created" and event["task"] == task and event["seq"] == 1, event
print("    event", event["type"], "seq", event["seq"], "task", task["id"])
