// roomchat's browser client library: protocol v2 over a WebSocket (docs/websocket.md),
// falling back to v1 when the server does not answer `hello`.
//
// One command per text frame, one event per text frame, the same JSON as over TCP
// (docs/protocol.md) without the "\r\n". No DOM here: the page (app.js) gives callbacks.
//
//   const client = new RoomchatClient("ws://127.0.0.1:8081/ws", {
//     name: "ann",                      // optional: the server picks an id without one
//     onEvent: (event) => ...,          // server events ({_et: ...}), see below
//     onState: (state, detail) => ...,  // "connecting" | "open" | "waiting" | "closed" | "refused"
//   });
//   client.connect();
//   client.join("general"); client.send("general", "hi"); client.leave("general");
//   client.command("create_room", {r: "games"}); client.command("open_dm", {u: "bob"});
//   const page = await client.history("general", {before: 42, limit: 50}); // older ones
//   client.editMessage("general", 42, "fixed"); client.deleteMessage("general", 42);
//   client.markRead("general", 97); client.typing("general");
//
// The client re-connects by itself (backoff 0.5 s doubling to 15 s, with jitter; after a
// `shutdown` notice, its reconnect_ms plus 0-50 %), says `hello` with the same name and
// the newest token, and re-joins its rooms asking for what it missed (`after`: the last
// sequence number it saw in each room), like roomchat.client.ReconnectingClient:
//
// - every user_message of a room is given to onEvent once, in `q` order, across
//   reconnects: the messages of a `history` are given as user_message events (with
//   `history: true`), and live ones already seen are dropped;
// - where that cannot be kept (the server lost messages, or restarted and lost its
//   history), onEvent gets {_et: "missed_messages", r: room} first;
// - `history` events themselves are not given to onEvent; server pings are answered.
// - each room's epoch (a history's `e`) is kept and sent with `after` on re-join; a
//   history in another epoch means the room's numbering restarted: everything is new.
// - a history's message that was edited or deleted comes with its `ed` (and `del`:
//   true, content empty), as user_message fields; pages (history()) are answered to
//   their caller only.

export const PROTOCOL_VERSION = 2;

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
const HELLO_TIMEOUT_MS = 1000; // without `welcome` by then: a v1 server
const HISTORY_ON_JOIN = 50;
const PAGE_TIMEOUT_MS = 10000;
const TOKEN_KEY = "roomchat.token"; // sessionStorage: {"name": ..., "token": ...}
// Refusals of `hello` that another attempt with the same name cannot cure.
const FINAL_REFUSALS = new Set(["name_taken", "name_invalid", "not_authorised", "bad_command"]);

/** The default endpoint: /ws on the server that served this page. */
export function defaultUrl(location = globalThis.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/** The token kept (for this tab) for `name`, or "". */
export function storedToken(name, storage = globalThis.sessionStorage) {
  try {
    const saved = JSON.parse(storage?.getItem(TOKEN_KEY) ?? "null");
    return saved && saved.name === name && typeof saved.token === "string" ? saved.token : "";
  } catch {
    return "";
  }
}

function storeToken(name, token, storage = globalThis.sessionStorage) {
  try {
    storage?.setItem(TOKEN_KEY, JSON.stringify({ name, token }));
  } catch {
    // storage full or disabled: the token lives in memory only
  }
}

export class RoomchatClient {
  /**
   * @param {string} url  ws:// or wss:// address of the /ws endpoint
   * @param {{onEvent?: (e: object) => void, onState?: (s: string, d?: object) => void,
   *          name?: string, token?: string, WebSocketImpl?: typeof WebSocket}} options
   */
  constructor(url, options = {}) {
    this.url = url;
    this.onEvent = options.onEvent ?? (() => {});
    this.onState = options.onState ?? (() => {});
    this.name = options.name ?? ""; // asked for in hello; after a welcome, the user id
    this.token = options.token ?? (this.name ? storedToken(this.name) : "");
    this.WebSocketImpl = options.WebSocketImpl ?? globalThis.WebSocket;
    this.state = "closed";
    this.version = 0; // 2 after a welcome, 1 after the hello timeout
    this.userId = null;
    this.sessionId = null;
    this.ownIds = new Set(); // every id this client has had: "own" messages survive reconnects
    this.rooms = []; // [{n, d}] from the login
    this.joined = new Set(); // rooms we are in (or asked to be in): re-joined on reconnect
    this.lastSeq = new Map(); // room -> the highest q given to onEvent
    this.epochs = new Map(); // room -> the epoch lastSeq counts in (a history's `e`)
    this.pages = new Map(); // id -> {resolve, reject, timer}: history pages asked for
    this.pageIds = 0;
    this.heartbeat = 0; // the welcome's hb, seconds
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.helloTimer = null;
    this.watchdog = null;
    this.lastHeard = 0;
    this.pinged = false;
    this.shutdown = null; // the shutdown notice of this connection, if any
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
    this._stop();
    this._setState("closed", { reason: "closed by you" });
  }

  join(room) {
    this.joined.add(room);
    this._join(room);
  }

  leave(room) {
    this.joined.delete(room);
    // lastSeq is kept: joining again asks for what came meanwhile, not for repeats.
    this._command({ _ct: "leave_room", r: room });
  }

  /** Post to a room. Returns false (and sends nothing) when not connected. */
  send(room, content) {
    return this._command({ _ct: "send_message", r: room, c: content });
  }

  /**
   * A v2 community command (docs/moderation.md): create_room, open_dm, kick, ban, mute...
   * with its fields, e.g. command("kick", {r: "club", u: "bob", why: "rude"}). Its
   * outcome comes as events (room_added, moderation, user_joined_room) or an error.
   * Returns false (and sends nothing) when not connected in v2.
   */
  command(ct, fields = {}) {
    if (this.version < 2) return false;
    return this._command({ _ct: ct, ...fields });
  }

  /**
   * A page of the room's stored history (v2, feature "paging"): the `limit` messages
   * below `before` (or above `after`; neither: the latest), oldest first. Resolves with
   * the `history` event ({r, ms, q, gap, e, id}; `ms` empty: nothing more); rejects with
   * the `error` event (e.g. not_member) or an Error when not connected, or after 10 s.
   */
  history(room, { before, after, limit = 50, epoch } = {}) {
    const id = `p${++this.pageIds}`;
    const command = { _ct: "history", r: room };
    if (before !== undefined) command.before = before;
    if (after !== undefined) command.after = after;
    command.limit = limit;
    if (epoch !== undefined) command.e = epoch;
    command.id = id;
    return new Promise((resolve, reject) => {
      if (this.version < 2 || !this._command(command)) {
        reject(new Error("not connected in v2"));
        return;
      }
      const timer = setTimeout(() => this._settlePage(id, null, new Error("no answer")), PAGE_TIMEOUT_MS);
      this.pages.set(id, { resolve, reject, timer });
    });
  }

  /** Edit message q (your own, or any as a moderator): false when not sent. */
  editMessage(room, q, content) {
    return this.command("edit_message", { r: room, q, c: content });
  }

  /** Delete message q (a tombstone stays): false when not sent. */
  deleteMessage(room, q) {
    return this.command("delete_message", { r: room, q });
  }

  /** Your read marker in the room moves to q (never back). */
  markRead(room, q) {
    return this.command("mark_read", { r: room, q });
  }

  /** Tell the room you are typing (the server passes one on every 3 s at most). */
  typing(room) {
    return this.command("typing", { r: room });
  }

  get connected() {
    return this.state === "open";
  }

  _settlePage(id, history, error) {
    const page = this.pages.get(id);
    if (!page) return false;
    this.pages.delete(id);
    clearTimeout(page.timer);
    if (error) page.reject(error);
    else page.resolve(history);
    return true;
  }

  _failPages(reason) {
    for (const id of [...this.pages.keys()]) this._settlePage(id, null, new Error(reason));
  }

  // -- internals ----------------------------------------------------------------------
  _join(room) {
    const command = { _ct: "join_room", r: room };
    if (this.version >= 2) {
      // First time: the last messages; again (a reconnect): everything after the last seen,
      // in the epoch it counts in.
      if (this.lastSeq.has(room)) {
        command.after = this.lastSeq.get(room);
        if (this.epochs.has(room)) command.e = this.epochs.get(room);
      } else command.h = HISTORY_ON_JOIN;
    }
    this._command(command);
  }

  _command(command) {
    if (this.state !== "open") return false;
    return this._raw(command);
  }

  _raw(command) {
    if (!this.socket || this.socket.readyState !== 1) return false;
    // Key order matters to no one but is kept as in docs/protocol.md.
    this.socket.send(JSON.stringify(command));
    return true;
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.onState(state, detail);
  }

  _stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    this._clearTimers();
    this._failPages("closed");
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, "bye");
    }
  }

  _clearTimers() {
    clearTimeout(this.helloTimer);
    this.helloTimer = null;
    clearInterval(this.watchdog);
    this.watchdog = null;
  }

  _open() {
    clearTimeout(this.timer);
    this.timer = null;
    this.version = 0;
    this.shutdown = null;
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
      this.lastHeard = Date.now();
      this.pinged = false;
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
      this._clearTimers();
      this._failPages("connection lost");
      const why = close.code === 1006 ? "connection lost" : `closed (${close.code})`;
      let reason = close.reason ? `${why}: ${close.reason}` : why;
      if (this.shutdown) reason = this.shutdown.msg || "server restarting";
      if (this.stopped) this._setState("closed", { reason, code: close.code });
      else this._retry(reason, close.code);
    };
    socket.onerror = () => {}; // onclose follows and says what happened
  }

  /** Sent when the socket opens: hello with the name (and its token) asked for. The
   *  server answers after its login_successful; a server without v2 ignores it. */
  hello() {
    const hello = { _ct: "hello", v: PROTOCOL_VERSION };
    if (this.name) hello.name = this.name;
    if (this.name && this.token) hello.token = this.token;
    this._raw(hello);
  }

  _event(event) {
    switch (event._et) {
      case "login_successful":
        this.sessionId = event.s;
        this.userId = event.u;
        this.rooms = event.rs ?? [];
        // v1 until the welcome; a server without v2 never sends one.
        this.helloTimer = setTimeout(() => {
          if (this.version === 0) this._ready(1, event);
        }, HELLO_TIMEOUT_MS);
        return;
      case "welcome":
        if (this.version === 2) break; // not ours to handle twice
        this.userId = event.u;
        this.name = event.u; // reconnect as the same user (a random id is a valid name)
        this.token = event.t ?? "";
        if (this.token) storeToken(this.name, this.token);
        this.heartbeat = Number(event.hb) || 0;
        this._ready(2, event);
        return;
      case "error":
        if (event.cmd === "hello" && this.version !== 2) return this._refused(event);
        if (event.cmd === "history" && event.id) this._settlePage(event.id, null, event);
        break;
      case "ping":
        this._raw({ _ct: "pong" });
        return;
      case "shutdown":
        this.shutdown = { reconnectMs: Number(event.reconnect_ms) || 0, msg: event.msg ?? "" };
        break;
      case "history":
        if (event.id !== undefined) {
          this._settlePage(event.id, event, null); // a page: its caller's, not the catch-up's
          return;
        }
        return this._catchUp(event);
      case "user_message":
        if (typeof event.q === "number") {
          if (event.q <= (this.lastSeq.get(event.r) ?? -1)) return; // seen (in a history)
          this.lastSeq.set(event.r, event.q);
        }
        break;
      default:
        break;
    }
    this.onEvent(event);
  }

  /** In: v1 (no welcome) or v2. The page hears login_successful, then the rooms are re-joined. */
  _ready(version, event) {
    clearTimeout(this.helloTimer);
    this.helloTimer = null;
    this.version = version;
    this.ownIds.add(this.userId);
    this.attempt = 0;
    this._setState("open", { userId: this.userId, version });
    this.onEvent({ _et: "login_successful", s: this.sessionId, u: this.userId, rs: this.rooms, v: version });
    if (version >= 2 && this.heartbeat > 0) this._watch();
    // Direct messages open on our side the server joins itself, at login, with their
    // history (the messages already seen are dropped by their q, as in any catch-up).
    for (const room of this.joined) if (!room.startsWith("dm:")) this._join(room);
  }

  /** With heartbeats: ping after hb seconds of silence, give up after 2 × hb. */
  _watch() {
    this.lastHeard = Date.now();
    const hb = this.heartbeat * 1000;
    this.watchdog = setInterval(() => {
      const silent = Date.now() - this.lastHeard;
      if (silent > 2 * hb) {
        this.socket?.close(4000, "no answer from the server");
      } else if (silent > hb && !this.pinged) {
        this.pinged = true;
        this._raw({ _ct: "ping" });
      }
    }, Math.min(1000, hb / 2));
  }

  /** A history: the messages not seen yet, as user_message events, oldest first. */
  _catchUp(history) {
    const room = history.r;
    let last = this.lastSeq.get(room);
    const epoch = this.epochs.get(room);
    if (history.e !== undefined) this.epochs.set(room, history.e);
    const otherEpoch = epoch !== undefined && history.e !== undefined && history.e !== epoch;
    if (last !== undefined && (history.q < last || otherEpoch)) {
      // The room's count restarted (the server lost its history): all of it is new.
      this.onEvent({ _et: "missed_messages", r: room, restarted: true });
      last = undefined;
    } else if (history.gap) {
      this.onEvent({ _et: "missed_messages", r: room, restarted: false });
    }
    let floor = last ?? -1;
    for (const message of history.ms ?? []) {
      if (message.q > floor) {
        floor = message.q;
        const shown = { _et: "user_message", r: room, u: message.u, c: message.c, q: message.q, ts: message.ts, history: true };
        if (message.ed !== undefined) shown.ed = message.ed;
        if (message.del) shown.del = true;
        this.onEvent(shown);
      }
    }
    this.lastSeq.set(room, Math.max(floor, history.q));
  }

  /** hello was refused: final (e.g. name_taken) or worth another try (shutting_down...). */
  _refused(error) {
    if (!FINAL_REFUSALS.has(error.code)) {
      this.onEvent(error); // e.g. shutting_down: the close follows, then another try
      return;
    }
    this._stop();
    this._setState("refused", { code: error.code, reason: error.msg ?? error.code });
  }

  _retry(reason, code) {
    if (this.stopped) return;
    let delay;
    if (this.shutdown) {
      delay = this.shutdown.reconnectMs * (1 + Math.random() * 0.5);
    } else {
      const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
      delay = backoff * (0.75 + Math.random() * 0.5);
    }
    const jittered = Math.max(100, Math.round(delay));
    this.attempt += 1;
    this._setState("waiting", {
      reason,
      code,
      delay: jittered,
      attempt: this.attempt,
      restarting: this.shutdown !== null,
    });
    this.timer = setTimeout(() => this._open(), jittered);
  }

  /** Try again now (the "Reconnect now" button). */
  retryNow() {
    if (this.state === "waiting") this._open();
  }
}
