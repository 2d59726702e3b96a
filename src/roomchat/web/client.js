// roomchat's browser client library: protocol v1 over a WebSocket (docs/websocket.md).
//
// One command per text frame, one event per text frame, the same JSON as over TCP
// (docs/protocol.md) without the "\r\n". No DOM here: the page (app.js) gives callbacks.
//
//   const client = new RoomchatClient("ws://127.0.0.1:8081/ws", {
//     onEvent: (event) => ...,          // every server event, as sent ({_et: ...})
//     onState: (state, detail) => ...,  // "connecting" | "open" | "waiting" | "closed"
//   });
//   client.connect();
//   client.join("general"); client.send("general", "hi"); client.leave("general");
//
// The client re-connects by itself (backoff 0.5 s doubling to 15 s, with jitter) and
// re-joins the rooms it was in. Protocol v2 (chosen names, history, catch-up) will
// plug into the marked places: `hello()` after the socket opens, `welcome` instead of
// `login_successful`, and a catch-up request per re-joined room.

export const PROTOCOL_VERSION = 1;

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

/** The default endpoint: /ws on the server that served this page. */
export function defaultUrl(location = globalThis.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

export class RoomchatClient {
  /**
   * @param {string} url  ws:// or wss:// address of the /ws endpoint
   * @param {{onEvent?: (e: object) => void, onState?: (s: string, d?: object) => void,
   *          name?: string, WebSocketImpl?: typeof WebSocket}} options
   */
  constructor(url, options = {}) {
    this.url = url;
    this.onEvent = options.onEvent ?? (() => {});
    this.onState = options.onState ?? (() => {});
    // v2: the chosen name is sent in `hello`; v1 has no names (the server picks an id).
    this.name = options.name ?? "";
    this.WebSocketImpl = options.WebSocketImpl ?? globalThis.WebSocket;
    this.state = "closed";
    this.userId = null; // this connection's id (changes on every reconnect in v1)
    this.sessionId = null;
    this.ownIds = new Set(); // every id this client has had: "own" messages survive reconnects
    this.rooms = []; // [{n, d}] from the login
    this.joined = new Set(); // rooms we are in (or asked to be in): re-joined on reconnect
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = true;
  }

  /** Open the connection (and keep it open, reconnecting, until close()). */
  connect() {
    this.stopped = false;
    this.attempt = 0;
    this._open();
  }

  /** Close for good: no reconnect. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, "bye");
    }
    this._setState("closed", { reason: "closed by you" });
  }

  join(room) {
    this.joined.add(room);
    this._command({ _ct: "join_room", r: room });
  }

  leave(room) {
    this.joined.delete(room);
    this._command({ _ct: "leave_room", r: room });
  }

  /** Post to a room. Returns false (and sends nothing) when not connected. */
  send(room, content) {
    return this._command({ _ct: "send_message", r: room, c: content });
  }

  get connected() {
    return this.state === "open";
  }

  // -- internals ----------------------------------------------------------------------
  _command(command) {
    if (!this.socket || this.socket.readyState !== 1 || this.state !== "open") return false;
    // Key order matters to no one but is kept as in docs/protocol.md.
    this.socket.send(JSON.stringify(command));
    return true;
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.onState(state, detail);
  }

  _open() {
    clearTimeout(this.timer);
    this.timer = null;
    this._setState("connecting", { attempt: this.attempt, url: this.url });
    let socket;
    try {
      socket = new this.WebSocketImpl(this.url);
    } catch (error) {
      this._retry(`cannot connect: ${error.message}`);
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.hello();
    };
    socket.onmessage = (message) => {
      if (socket !== this.socket || typeof message.data !== "string") return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // not JSON: ignore, as the protocol does
      }
      this._event(event);
    };
    socket.onclose = (close) => {
      if (socket !== this.socket) return;
      this.socket = null;
      const why = close.code === 1006 ? "connection lost" : `closed (${close.code})`;
      const reason = close.reason ? `${why}: ${close.reason}` : why;
      if (this.stopped) this._setState("closed", { reason, code: close.code });
      else this._retry(reason, close.code);
    };
    socket.onerror = () => {}; // onclose follows and says what happened
  }

  /** Sent when the socket opens. v1: the server speaks first, so nothing.
   *  v2: send {"_ct":"hello","v":2,"name":this.name,...} here. */
  hello() {}

  _event(event) {
    if (event._et === "login_successful") {
      // v2: "welcome" (with the chosen name and history) will be handled here too.
      this.sessionId = event.s;
      this.userId = event.u;
      this.ownIds.add(event.u);
      this.rooms = event.rs ?? [];
      this.attempt = 0;
      this._setState("open", { userId: event.u });
      this.onEvent(event);
      // Re-join after a reconnect (v2: and ask for what was missed meanwhile).
      for (const room of this.joined) this._command({ _ct: "join_room", r: room });
      return;
    }
    this.onEvent(event);
  }

  _retry(reason, code) {
    if (this.stopped) return;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const jittered = Math.round(delay * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this._setState("waiting", { reason, code, delay: jittered, attempt: this.attempt });
    this.timer = setTimeout(() => this._open(), jittered);
  }

  /** Try again now (the "Reconnect now" button). */
  retryNow() {
    if (this.state === "waiting") this._open();
  }
}
