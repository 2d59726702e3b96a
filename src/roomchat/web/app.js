// The roomchat web page: connect page, rooms, messages, members (docs/websocket.md).
//
// Everything the server or other users sent is shown with textContent (never innerHTML),
// so a message such as <img src=x onerror=...> is text, not markup.

import { RoomchatClient, defaultUrl } from "./client.js";

const MAX_MESSAGES_PER_ROOM = 500;
const NOTICE_MS = 8000;
// v2's lasting history (docs/websocket.md, "History that lasts").
const PAGE_SIZE = 50; // older messages asked for at a time
const MARK_EVERY_MS = 2000; // the open room's read marker, at most this often
const TYPING_EVERY_MS = 3000; // "typing" sent at most this often while one types
const TYPING_SHOWN_MS = 5000; // "bob is typing…" shown this long
const TOMBSTONE = "message deleted";

/** What a refused hello means, for the connect page. */
const REFUSALS = {
  name_taken: (name) => `The name "${name}" is taken: pick another one.`,
  name_invalid: () => "Names are 1 to 32 letters, digits, _ - or . (no spaces).",
  not_authorised: (name) => `This server needs a token for "${name}".`,
};

const $ = (id) => document.getElementById(id);

/** Create an element with a class and text (text always through textContent). */
const SLASH_HELP =
  "Commands: /create ROOM [description], /private ROOM, /dm USER, /invite USER, /kick USER [why], " +
  "/ban USER [seconds] [why], /unban USER, /mute USER [seconds] [why], /unmute USER, /slow SECONDS, /archive [why], /audit, " +
  "/edit [Q] TEXT, /delete [Q] (Q: the message's #number; without it, your last message)";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeOf(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** A stable colour per user id, for avatars. */
function hueOf(id) {
  let hash = 0;
  for (const ch of id) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

class App {
  constructor() {
    this.client = null;
    this.rooms = new Map(); // name -> {name, description, joined, unread, members:Set, items:[]}
    this.current = null;
    this.focusComposer = false;
    this.markTimer = null;
    this.markedAt = 0;
    this.bindConnectPage();
    this.bindChat();
  }

  // -- connect page ------------------------------------------------------------------
  bindConnectPage() {
    const url = $("url-input");
    url.value = localStorage.getItem("roomchat.url") || defaultUrl();
    $("name-input").value = localStorage.getItem("roomchat.name") || "";
    $("connect-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.start();
    });
    const params = new URLSearchParams(location.search);
    if (params.has("autoconnect")) this.start();
    else $("name-input").focus();
  }

  start() {
    const url = $("url-input").value.trim() || defaultUrl();
    if (!/^wss?:\/\//.test(url)) {
      this.connectError("The address must start with ws:// or wss://");
      return;
    }
    const name = $("name-input").value.trim();
    localStorage.setItem("roomchat.url", url);
    localStorage.setItem("roomchat.name", name);
    this.connectError("");
    this.client = new RoomchatClient(url, {
      name,
      onEvent: (event) => this.onEvent(event),
      onState: (state, detail) => this.onState(state, detail),
    });
    this.client.connect();
  }

  connectError(text) {
    const error = $("connect-error");
    error.textContent = text;
    error.hidden = !text;
  }

  showChat(visible) {
    $("connect-view").hidden = visible;
    $("chat-view").hidden = !visible;
  }

  // -- connection state --------------------------------------------------------------
  onState(state, detail) {
    const status = $("status");
    status.dataset.state = state;
    const banner = $("banner");
    if (state === "refused") {
      // hello refused (name taken or invalid...): the client has stopped.
      status.textContent = "Disconnected";
      const explain = REFUSALS[detail.code];
      const text = explain ? explain(this.client.name) : `Refused: ${detail.reason}`;
      if ($("chat-view").hidden) {
        this.connectError(text);
        $("name-input").focus();
      } else {
        $("banner-text").textContent = `${text} Disconnect and pick another name.`;
        banner.hidden = false;
      }
    } else if (state === "open") {
      status.textContent = "Connected";
      banner.hidden = true;
      this.connectError("");
      this.showChat(true);
    } else if (state === "connecting") {
      status.textContent = detail.attempt ? "Reconnecting…" : "Connecting…";
    } else if (state === "waiting") {
      const seconds = Math.max(1, Math.round(detail.delay / 1000));
      status.textContent = "Offline";
      if ($("chat-view").hidden) {
        // Never got in: say so on the connect page, and keep trying.
        this.connectError(`Cannot reach ${this.client.url}: ${detail.reason}. Retrying in ${seconds} s…`);
      } else {
        $("banner-text").textContent = detail.restarting
          ? `The server is restarting. Reconnecting in ${seconds} s; your rooms will be re-joined.`
          : `Connection problem: ${detail.reason}. Reconnecting in ${seconds} s; your rooms will be re-joined.`;
        banner.hidden = false;
        for (const room of this.rooms.values()) room.members.clear();
        this.renderMembers();
      }
    } else if (state === "closed") {
      status.textContent = "Disconnected";
    }
  }

  // -- events ------------------------------------------------------------------------
  onEvent(event) {
    switch (event._et) {
      case "login_successful":
        return this.onLogin(event);
      case "user_joined_room":
        return this.onJoinedRoom(event);
      case "room_participation":
        return this.onParticipation(event);
      case "user_message":
        return this.onMessage(event);
      case "missed_messages":
        return this.onMissed(event);
      case "error":
        return this.notice(`Error (${event.code}): ${event.msg ?? ""}`, "error");
      case "rate_limited":
        return this.notice(`Slow down: the server paused reading for ${event.retry_ms} ms.`, "warning");
      case "shutdown":
        return this.onShutdown(event);
      case "rooms":
        for (const room of event.rs ?? []) this.addRoom(room);
        return this.renderRooms();
      case "room_added":
        this.addRoom(event.rm);
        this.renderRooms();
        return this.notice(`New room: #${event.rm.n}`, "info");
      case "room_removed":
        return this.onRoomRemoved(event);
      case "moderation":
        return this.onModeration(event);
      case "audit":
        return this.onAudit(event);
      case "message_edited":
        return this.updateItem(event.r, event.q, { text: event.c, edited: true });
      case "message_deleted":
        return this.updateItem(event.r, event.q, { text: "", deleted: true, edited: false });
      case "typing":
        return this.onTyping(event);
      default:
        return undefined; // an event this page does not know: ignore
    }
  }

  onLogin(event) {
    $("user-id").textContent = event.u;
    const reconnect = this.rooms.size > 0;
    for (const room of event.rs) {
      const known = this.rooms.get(room.n);
      if (known) known.description = room.d;
      else this.rooms.set(room.n, newRoom(room.n, room.d));
    }
    if (reconnect) {
      for (const room of this.rooms.values()) {
        if (room.joined) this.addItem(room, { kind: "system", text: "Reconnected" });
      }
    }
    this.renderRooms();
    if (!reconnect) {
      const first = $("room-list").querySelector("button");
      if (first) first.focus();
    }
  }

  /** A room from `rooms` or `room_added` (private ones, direct messages: `dm`). */
  addRoom(listing) {
    const description = listing.dm ? `Direct messages with ${listing.dm}` : listing.d;
    let room = this.rooms.get(listing.n);
    if (room) {
      room.description = description;
      room.private = Boolean(listing.p);
    } else {
      room = newRoom(listing.n, description, { private: Boolean(listing.p), dm: listing.dm ?? null });
      this.rooms.set(listing.n, room);
    }
    // v2 read markers (at login): what came after the marker counts as unread. Not for a
    // room the page is in (a reconnect): its catch-up counts what was missed.
    if (room.joined) return;
    if (typeof listing.un === "number" && room.name !== this.current) room.unread = listing.un;
    if (typeof listing.rd === "number") room.readMarker = listing.rd;
  }

  onRoomRemoved(event) {
    if (!this.rooms.delete(event.r)) return;
    this.client.joined.delete(event.r);
    if (this.current === event.r) this.backToRooms();
    this.renderRooms();
    this.notice(`#${event.r} is gone: ${event.why ?? "removed"}`, "warning");
  }

  onModeration(event) {
    const who = event.u ? ` ${event.u}` : "";
    const extra = [event.why, event.s !== undefined ? `${event.s} s` : null, event.role]
      .filter(Boolean)
      .join(", ");
    const text = `${event.by}: ${event.what}${who}${extra ? ` (${extra})` : ""}`;
    const room = this.rooms.get(event.r);
    if (room) this.addItem(room, { kind: "system", text });
    if (event.u && this.isOwn(event.u) && ["kick", "ban", "mute"].includes(event.what)) {
      const past = { kick: "kicked", ban: "banned", mute: "muted" }[event.what];
      const where = event.r ? `#${event.r}` : "this server";
      this.notice(`You were ${past} in ${where}: ${event.why || "no reason given"}`, "error");
      if (room && event.what !== "mute") {
        room.joined = false;
        this.client.joined.delete(room.name);
        this.renderRooms();
      }
    }
  }

  onAudit(event) {
    const room = this.rooms.get(event.r);
    if (!room) return;
    for (const entry of event.es) {
      const who = entry.u ? ` ${entry.u}` : "";
      const time = new Date(entry.ts).toLocaleString();
      this.addItem(room, { kind: "system", text: `audit ${time}: ${entry.by} ${entry.what}${who}${entry.why ? ` (${entry.why})` : ""}` });
    }
  }

  /** A line starting with "/" (see SLASH_HELP); true when it was sent. */
  slash(text) {
    const [verb, ...args] = text.slice(1).trim().split(/\s+/);
    if (verb === "edit" || verb === "delete") return this.editOrDelete(verb, text.slice(1).trimStart().slice(verb.length));
    const room = this.current;
    const rest = (from) => args.slice(from).join(" ") || undefined;
    const timed = () => (/^\d+$/.test(args[1] ?? "") ? { s: Number(args[1]), why: rest(2) } : { why: rest(1) });
    const commands = {
      create: () => ["create_room", { r: args[0], d: rest(1) ?? "" }],
      private: () => ["create_room", { r: args[0], d: rest(1) ?? "", p: true }],
      dm: () => ["open_dm", { u: args[0] }],
      invite: () => ["invite", { r: room, u: args[0] }],
      kick: () => ["kick", { r: room, u: args[0], why: rest(1) }],
      ban: () => ["ban", { r: room, u: args[0], ...timed() }],
      unban: () => ["unban", { r: room, u: args[0] }],
      mute: () => ["mute", { r: room, u: args[0], ...timed() }],
      unmute: () => ["unmute", { r: room, u: args[0] }],
      slow: () => ["slow_mode", { r: room, s: Number(args[0]) || 0 }],
      archive: () => ["archive_room", { r: room, why: rest(0) }],
      audit: () => ["audit_log", { r: room }],
    };
    const make = commands[verb];
    const needsRoom = !["create", "private", "dm"].includes(verb);
    if (!make || (verb !== "archive" && verb !== "audit" && !args[0]) || (needsRoom && !room)) {
      this.notice(SLASH_HELP, "info");
      return false;
    }
    const [ct, fields] = make();
    for (const key of Object.keys(fields)) if (fields[key] === undefined) delete fields[key];
    if (!this.client.command(ct, fields)) {
      this.notice("Not sent: this needs a v2 server and a connection.", "error");
      return false;
    }
    return true;
  }

  /**
   * /edit Q TEXT, /delete Q (Q, or #Q: the number shown on the message), or without Q
   * your last message in the open room. `rest`: the line after the verb.
   */
  editOrDelete(verb, rest) {
    const room = this.rooms.get(this.current);
    if (!room || !room.joined) {
      this.notice("Open a room first.", "info");
      return false;
    }
    const numbered = rest.match(/^\s+#?(\d+)(?:\s+([\s\S]*))?$/);
    const q = numbered ? Number(numbered[1]) : ownLast(room);
    const content = numbered ? (numbered[2] ?? "") : rest.trim();
    if (verb === "edit" && !content.trim()) {
      this.notice(SLASH_HELP, "info");
      return false;
    }
    if (!q) {
      this.notice(`No message of yours here to ${verb}: give its number, /${verb} Q.`, "info");
      return false;
    }
    const sent = verb === "edit" ? this.client.editMessage(room.name, q, content) : this.client.deleteMessage(room.name, q);
    if (!sent) this.notice("Not sent: this needs a v2 server and a connection.", "error");
    return sent;
  }

  /** An edit or a deletion (message_edited, message_deleted): the message changes in place. */
  updateItem(roomName, q, changes) {
    const room = this.rooms.get(roomName);
    const item = room?.items.find((i) => i.kind === "message" && i.q === q);
    if (!item) return;
    Object.assign(item, changes);
    if (room.name !== this.current) return;
    const node = $("messages").querySelector(`li[data-q="${q}"]`);
    node?.replaceWith(this.itemNode(item));
  }

  onTyping(event) {
    const room = this.rooms.get(event.r);
    if (!room || this.isOwn(event.u)) return;
    room.typing.set(event.u, Date.now() + TYPING_SHOWN_MS);
    if (room.name === this.current) this.renderTyping();
    setTimeout(() => {
      if (room.name === this.current) this.renderTyping();
    }, TYPING_SHOWN_MS + 50);
  }

  renderTyping() {
    const room = this.rooms.get(this.current);
    const now = Date.now();
    const users = [];
    if (room) {
      for (const [user, until] of room.typing) {
        if (until > now) users.push(user);
        else room.typing.delete(user);
      }
    }
    users.sort();
    let text = "";
    if (users.length === 1) text = `${users[0]} is typing…`;
    else if (users.length > 1 && users.length <= 3) text = `${users.slice(0, -1).join(", ")} and ${users.at(-1)} are typing…`;
    else if (users.length > 3) text = `${users.length} people are typing…`;
    $("typing").textContent = text;
  }

  /** The message box changed: "typing" to the open room, at most every 3 s. */
  sendTyping() {
    const room = this.rooms.get(this.current);
    const text = $("message-input").value;
    if (!room || !room.joined || !text.trim() || (text.startsWith("/") && !text.startsWith("//"))) return;
    const now = Date.now();
    if (now - room.typingSent < TYPING_EVERY_MS) return;
    if (this.client.typing(room.name)) room.typingSent = now;
  }

  /** The open room is shown: mark it read up to its last message (at most every 2 s). */
  markSoon() {
    const room = this.rooms.get(this.current);
    if (!room || !room.joined || document.hidden || !this.client || this.client.version < 2) return;
    const q = this.client.lastSeq.get(room.name);
    if (!q || q <= room.marked) return;
    const wait = this.markedAt + MARK_EVERY_MS - Date.now();
    if (wait > 0) {
      this.markTimer ??= setTimeout(() => {
        this.markTimer = null;
        this.markSoon();
      }, wait);
      return;
    }
    if (this.client.markRead(room.name, q)) {
      room.marked = q;
      this.markedAt = Date.now();
    }
  }

  /** Scroll back: the messages before the oldest one shown, from the server (v2). */
  async loadOlder() {
    const room = this.rooms.get(this.current);
    if (!room || !room.joined || room.historyDone || room.loading || !this.client || this.client.version < 2) return;
    const numbers = room.items.filter((i) => typeof i.q === "number").map((i) => i.q);
    let before = numbers.length ? Math.min(...numbers) : undefined;
    if (before === undefined) {
      const last = this.client.lastSeq.get(room.name);
      if (!last) {
        room.historyDone = true;
        this.renderOlder();
        return;
      }
      before = last + 1;
    }
    room.loading = true;
    this.renderOlder();
    try {
      const page = await this.client.history(room.name, { before, limit: PAGE_SIZE, epoch: this.client.epochs.get(room.name) });
      if (page.gap) {
        room.historyDone = true;
        room.items.unshift({ kind: "gap", text: "The room's history restarted: older messages are gone", time: new Date() });
      } else {
        const older = (page.ms ?? []).filter((m) => m.q < before).map((m) => this.pastItem(m));
        if (!older.length) {
          room.historyDone = true;
          room.items.unshift({ kind: "system", text: "Start of the room's history", time: new Date() });
        } else {
          room.items.unshift(...older);
          room.cap = Math.max(room.cap, room.items.length + MAX_MESSAGES_PER_ROOM);
        }
      }
    } catch (error) {
      this.notice(`No older messages: ${error.code ?? error.message}`, "error");
    } finally {
      room.loading = false;
    }
    if (room.name === this.current) this.renderRoom({ keepView: true });
  }

  pastItem(message) {
    return {
      kind: "message",
      user: message.u,
      text: message.del ? "" : message.c,
      own: this.isOwn(message.u),
      q: message.q,
      time: new Date(message.ts),
      edited: message.ed !== undefined && !message.del,
      deleted: Boolean(message.del),
    };
  }

  /** The "Load older messages" button above the messages. */
  renderOlder() {
    const room = this.rooms.get(this.current);
    const button = $("older-button");
    button.hidden = !room || !room.joined || room.historyDone || !this.client || this.client.version < 2;
    button.disabled = Boolean(room?.loading);
    button.textContent = room?.loading ? "Loading…" : "Load older messages";
  }

  onJoinedRoom(event) {
    const room = this.rooms.get(event.r);
    if (!room) return;
    room.joined = true;
    room.members = new Set(event.us);
    this.renderRooms();
    if (room.name === this.current) this.renderRoom();
  }

  onParticipation(event) {
    const room = this.rooms.get(event.r);
    if (!room) return;
    if (event.s === "joined") room.members.add(event.u);
    else room.members.delete(event.u);
    const who = this.isOwn(event.u) ? "You" : event.u;
    this.addItem(room, { kind: "system", text: `${who} ${event.s === "joined" ? "joined" : "left"}` });
    if (room.name === this.current) {
      this.renderMembers();
      this.markSoon(); // (after a join's history: read up to its last message)
    }
  }

  onMessage(event) {
    const room = this.rooms.get(event.r);
    if (!room) return;
    const time = typeof event.ts === "number" ? new Date(event.ts) : new Date();
    if (event.history && room.readMarker !== undefined && event.q > room.readMarker) {
      room.readMarker = undefined; // once: above the first message not read yet
      this.addItem(room, { kind: "system", text: "Unread" });
    }
    if (room.typing.delete(event.u) && room.name === this.current) this.renderTyping();
    const deleted = Boolean(event.del);
    this.addItem(room, {
      kind: "message",
      user: event.u,
      text: deleted ? "" : event.c,
      own: this.isOwn(event.u),
      q: event.q,
      time,
      edited: event.ed !== undefined && !deleted,
      deleted,
    });
    if (room.name !== this.current || document.hidden) {
      room.unread += 1;
      this.renderRooms();
    } else {
      this.markSoon();
    }
  }

  onMissed(event) {
    const room = this.rooms.get(event.r);
    if (!room) return;
    const text = event.restarted
      ? "Some messages were missed: the server restarted and lost the room's history"
      : "Some messages were missed";
    this.addItem(room, { kind: "gap", text });
  }

  onShutdown(event) {
    const seconds = Math.max(1, Math.round((event.reconnect_ms ?? 0) / 1000));
    $("banner-text").textContent = `${event.msg || "Server restarting"}: reconnecting in about ${seconds} s…`;
    $("banner").hidden = false;
  }

  /** A short-lived line under the top bar: errors, flood control. */
  notice(text, kind) {
    const notice = $("notice");
    notice.textContent = text;
    notice.dataset.kind = kind;
    notice.hidden = false;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => {
      notice.hidden = true;
    }, NOTICE_MS);
  }

  isOwn(userId) {
    return this.client !== null && this.client.ownIds.has(userId);
  }

  addItem(room, item) {
    item.time ??= new Date();
    room.items.push(item);
    if (room.items.length > room.cap) room.items.shift();
    if (room.name === this.current) this.appendItem(item, true);
  }

  // -- rendering (textContent only) ---------------------------------------------------
  renderRooms() {
    const list = $("room-list");
    const focused = document.activeElement?.dataset?.room;
    list.replaceChildren();
    for (const room of this.rooms.values()) {
      const item = el("li");
      const button = el("button", "room-button");
      button.type = "button";
      button.dataset.room = room.name;
      if (room.name === this.current) button.setAttribute("aria-current", "true");
      if (room.joined) button.classList.add("joined");
      const mark = room.dm ? `@ ${room.dm}` : `${room.private ? "🔒" : "#"} ${room.name}`;
      const name = el("span", "room-name", mark);
      const description = el("span", "room-description", room.description);
      button.append(name, description);
      let label = `${room.name}: ${room.description}`;
      if (room.joined) label += ", joined";
      if (room.unread) {
        const badge = el("span", "badge", room.unread > 99 ? "99+" : String(room.unread));
        badge.setAttribute("aria-hidden", "true");
        button.append(badge);
        label += `, ${room.unread} unread`;
      }
      button.setAttribute("aria-label", label);
      button.addEventListener("click", () => this.openRoom(room.name));
      item.append(button);
      list.append(item);
    }
    if (focused) list.querySelector(`button[data-room="${CSS.escape(focused)}"]`)?.focus();
  }

  openRoom(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    this.current = name;
    room.unread = 0;
    if (!room.joined) this.client.join(name);
    $("chat-view").dataset.pane = "room";
    this.focusComposer = true; // now, or once the join is answered
    this.renderRooms();
    this.renderRoom();
  }

  leaveRoom() {
    const room = this.rooms.get(this.current);
    if (!room || !room.joined) return;
    this.client.leave(room.name);
    room.joined = false;
    room.members.clear();
    this.addItem(room, { kind: "system", text: "You left" });
    this.renderRooms();
    this.renderRoom();
    this.backToRooms();
  }

  backToRooms() {
    this.focusComposer = false;
    $("chat-view").dataset.pane = "rooms";
    const button = this.current
      ? $("room-list").querySelector(`button[data-room="${CSS.escape(this.current)}"]`)
      : $("room-list").querySelector("button");
    button?.focus();
  }

  /** Draw the open room; `keepView`: keep the messages in view where they are (older
   *  ones came in on top). */
  renderRoom({ keepView = false } = {}) {
    const room = this.rooms.get(this.current);
    if (!room) return;
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    $("room-title").textContent = `# ${room.name}`;
    $("room-description").textContent = room.description;
    const input = $("message-input");
    input.disabled = !room.joined;
    input.placeholder = room.joined ? `Message #${room.name}` : "Joining…";
    $("send-button").disabled = !room.joined;
    if (room.joined && this.focusComposer) {
      this.focusComposer = false;
      input.focus();
    }
    $("leave-button").disabled = !room.joined;
    $("members-button").disabled = false;
    list.replaceChildren();
    for (const item of room.items) this.appendItem(item, false);
    list.scrollTop = keepView ? list.scrollHeight - fromBottom : list.scrollHeight;
    this.lastScrollTop = list.scrollTop;
    this.renderMembers();
    this.renderOlder();
    this.renderTyping();
    this.markSoon();
  }

  appendItem(item, scroll) {
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.append(this.itemNode(item));
    if (scroll && (atBottom || item.own)) list.scrollTop = list.scrollHeight;
  }

  /** One message (or notice) as a list item; a message carries its number (data-q). */
  itemNode(item) {
    const node = el("li", item.kind === "message" ? "msg" : "system");
    if (item.kind === "gap") node.classList.add("gap");
    if (item.kind !== "message") {
      node.textContent = item.text;
    } else {
      if (item.own) node.classList.add("own");
      const avatar = el("span", "avatar", item.user.slice(0, 2));
      avatar.style.setProperty("--hue", String(hueOf(item.user)));
      avatar.setAttribute("aria-hidden", "true");
      const body = el("div", "bubble");
      const meta = el("div", "meta");
      meta.append(el("span", "author", item.own ? `${item.user} (you)` : item.user));
      const time = el("time", "time", timeOf(item.time));
      time.dateTime = item.time.toISOString();
      meta.append(time);
      if (typeof item.q === "number") {
        node.dataset.q = String(item.q);
        meta.append(el("span", "seq", `#${item.q}`));
      }
      if (item.edited) meta.append(el("span", "edited", "(edited)"));
      const text = el("p", "text", item.deleted ? TOMBSTONE : item.text);
      if (item.deleted) {
        text.classList.add("deleted");
        node.classList.add("deleted");
      }
      body.append(meta, text);
      node.append(avatar, body);
    }
    return node;
  }

  renderMembers() {
    const room = this.rooms.get(this.current);
    const list = $("member-list");
    list.replaceChildren();
    const members = room ? [...room.members].sort() : [];
    $("member-count").textContent = String(members.length);
    $("members-button").setAttribute("aria-label", `${members.length} members`);
    for (const user of members) {
      const item = el("li", "member");
      const avatar = el("span", "avatar small", user.slice(0, 2));
      avatar.style.setProperty("--hue", String(hueOf(user)));
      avatar.setAttribute("aria-hidden", "true");
      item.append(avatar, el("span", "member-name", this.isOwn(user) ? `${user} (you)` : user));
      list.append(item);
    }
  }

  // -- chat controls ------------------------------------------------------------------
  bindChat() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("message-input");
      const text = input.value;
      if (text.startsWith("/") && !text.startsWith("//")) {
        if (this.slash(text)) input.value = "";
        return;
      }
      if (!text.trim() || !this.current) return;
      if (this.client.send(this.current, text.startsWith("//") ? text.slice(1) : text)) input.value = "";
    });
    $("message-input").addEventListener("input", () => this.sendTyping());
    $("older-button").addEventListener("click", () => this.loadOlder());
    // Scrolled up to the top of the messages: the older ones come by themselves.
    $("messages").addEventListener("scroll", () => {
      const list = $("messages");
      const up = list.scrollTop < (this.lastScrollTop ?? 0);
      this.lastScrollTop = list.scrollTop;
      if (up && list.scrollTop < 40) this.loadOlder();
    });
    $("message-input").addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this.backToRooms();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && $("members").classList.contains("open")) {
        this.toggleMembers(false);
      }
    });
    // Arrow keys (and Home/End) move between rooms; Enter or Space opens one.
    $("room-list").addEventListener("keydown", (event) => {
      const buttons = [...$("room-list").querySelectorAll("button")];
      const index = buttons.indexOf(document.activeElement);
      if (index < 0) return;
      const next = {
        ArrowDown: index + 1,
        ArrowUp: index - 1,
        Home: 0,
        End: buttons.length - 1,
      }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      buttons[Math.max(0, Math.min(buttons.length - 1, next))].focus();
    });
    $("leave-button").addEventListener("click", () => this.leaveRoom());
    $("back-button").addEventListener("click", () => this.backToRooms());
    $("members-button").addEventListener("click", () => this.toggleMembers());
    $("retry-button").addEventListener("click", () => this.client?.retryNow());
    $("disconnect-button").addEventListener("click", () => {
      this.client?.close();
      this.client = null;
      this.rooms.clear();
      this.current = null;
      $("messages").replaceChildren();
      $("banner").hidden = true;
      $("notice").hidden = true;
      this.showChat(false);
      $("name-input").focus();
    });
    document.addEventListener("visibilitychange", () => {
      const room = this.rooms.get(this.current);
      if (!document.hidden && room && room.unread) {
        room.unread = 0;
        this.renderRooms();
      }
      if (!document.hidden) this.markSoon();
    });
  }

  toggleMembers(open) {
    const panel = $("members");
    const show = open ?? !panel.classList.contains("open");
    panel.classList.toggle("open", show);
    $("members-button").setAttribute("aria-expanded", String(show));
  }
}

/** A room as the page keeps it. */
function newRoom(name, description, extra = {}) {
  return {
    name,
    description,
    private: false,
    dm: null,
    joined: false,
    unread: 0,
    members: new Set(),
    items: [],
    cap: MAX_MESSAGES_PER_ROOM, // items kept (grows as older pages come in)
    readMarker: undefined, // v2: the highest q read, from the login's rooms listing
    marked: 0, // the last q sent in mark_read
    typing: new Map(), // user -> until (ms) "is typing…" is shown
    typingSent: 0, // when "typing" was last sent (ms)
    historyDone: false, // an older page found nothing more
    loading: false, // an older page is on its way
    ...extra,
  };
}

/** The number of this user's last message in the room (not deleted), for /edit and /delete. */
function ownLast(room) {
  for (let i = room.items.length - 1; i >= 0; i -= 1) {
    const item = room.items[i];
    if (item.kind === "message" && item.own && typeof item.q === "number" && !item.deleted) return item.q;
  }
  return undefined;
}

window.roomchat = new App();
