// k6 probe of delivery latency, POST (or NATS PUB) → WebSocket frame, as users measure it:
// SUBS WebSocket subscribers on one board while RATE creates a second are posted through the same
// gateway. Every created task's title carries its send time ("probe-<ms since epoch>"), so a
// subscriber's frame gives the latency whatever the server's event format.
//
// Env: TARGET=http (ours or the Go original: POST /api/tasks, /ws) or nats (nats-server's own
// WebSocket listener: PUB on one connection, SUB on the others); URL (http://host:port, or
// ws://host:port for nats); BOARD (default 1); SUBS (200); RATE (20); DURATION (seconds, 30); PAD (bytes
// added to each nats payload so it is as large as a board event, default 400).
import http from 'k6/http';
import ws from 'k6/ws';
import { Trend, Counter } from 'k6/metrics';

const target = __ENV.TARGET || 'http';
const base = __ENV.URL || 'http://127.0.0.1:8080';
const board = Number(__ENV.BOARD || 1);
const subs = Number(__ENV.SUBS || 200);
const rate = Number(__ENV.RATE || 20);
const seconds = Number(__ENV.DURATION || 30);
const pad = 'x'.repeat(Number(__ENV.PAD || 400));
// Subscribers connect first; writes start after this and stop `tail` seconds before they leave.
const warm = 5;
const tail = 3;

const latency = new Trend('post_to_frame', true);
const frames = new Counter('probe_frames');
const sent = new Counter('probe_sent');

export const options = {
  summaryTrendStats: ['p(50)', 'p(90)', 'p(99)', 'max', 'count'],
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations', vus: subs, iterations: 1, exec: 'subscriber',
      maxDuration: `${warm + seconds + tail + 30}s`,
    },
    writer: target === 'nats'
      ? { executor: 'per-vu-iterations', vus: 1, iterations: 1, exec: 'natsWriter', startTime: `${warm}s`,
          maxDuration: `${seconds + 30}s` }
      : { executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration: `${seconds}s`,
          preAllocatedVUs: 20, maxVUs: 200, exec: 'httpWriter', startTime: `${warm}s` },
  },
};

function record(data) {
  const now = Date.now();
  // One event per distinct stamp: our frames carry the title twice (the original's flat fields
  // and `task`), a nats frame may carry several messages.
  for (const stamp of new Set(Array.from(data.matchAll(/probe-(\d+)/g), (m) => m[1]))) {
    latency.add(now - Number(stamp));
    frames.add(1);
  }
}

export function subscriber() {
  const url = target === 'nats' ? base : `${base.replace(/^http/, 'ws')}/ws?board_id=${board}`;
  ws.connect(url, {}, (socket) => {
    socket.on('open', () => {
      if (target === 'nats') {
        socket.send('CONNECT {"verbose":false,"pedantic":false}\r\nSUB board.probe 1\r\n');
      }
    });
    socket.on('message', (data) => {
      if (target === 'nats' && data.startsWith('PING')) socket.send('PONG\r\n');
      record(data);
    });
    // nats-server sends binary frames.
    socket.on('binaryMessage', (buf) => {
      const text = String.fromCharCode.apply(null, new Uint8Array(buf));
      if (text.startsWith('PING')) socket.send('PONG\r\n');
      record(text);
    });
    socket.setTimeout(() => socket.close(), (warm + seconds + tail) * 1000);
  });
}

export function httpWriter() {
  const body = JSON.stringify({ board_id: board, title: `probe-${Date.now()}` });
  const r = http.post(`${base}/api/tasks`, body, { headers: { 'Content-Type': 'application/json' } });
  if (r.status === 201 || r.status === 200) sent.add(1);
}

export function natsWriter() {
  ws.connect(base, {}, (socket) => {
    socket.on('open', () => {
      socket.send('CONNECT {"verbose":false,"pedantic":false}\r\n');
      socket.setInterval(() => {
        const payload = `{"title":"probe-${Date.now()}","pad":"${pad}"}`;
        socket.send(`PUB board.probe ${payload.length}\r\n${payload}\r\n`);
        sent.add(1);
      }, 1000 / rate);
      socket.setTimeout(() => socket.close(), seconds * 1000);
    });
    socket.on('message', (data) => { if (data.startsWith('PING')) socket.send('PONG\r\n'); });
  });
}
