// The roomchat web page: connect page, rooms, messages, members (docs/websocket.md).
//
// Everything the server or other users sent is shown with textContent (never innerHTML),
// so a message such as <img src=x onerror=...> is text, not markup.

import { RoomchatClient, defaultUrl } from "./client.js";

const MAX_MESSAGES_PER_ROOM = 500;
const NOTICE_MS = 8000;

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
  "/ban USER [seconds] [why], /unban USER, /mute USER [seconds] [why], /unmute USER, /slow SECONDS, /archive [why], /audit";

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
      else
        this.rooms.set(room.n, {
          name: room.n,
          description: room.d,
          joined: false,
          unread: 0,
          members: new Set(),
          items: [],
        });
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
    const known = this.rooms.get(listing.n);
    if (known) {
      known.description = description;
      known.private = Boolean(listing.p);
      return;
    }
    this.rooms.set(listing.n, {
      name: listing.n,
      description,
      private: Boolean(listing.p),
      dm: listing.dm ?? null,
      joined: false,
      unread: 0,
      members: new Set(),
      items: [],
    });
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
    if (room.name === this.current) this.renderMembers();
  }

  onMessage(event) {
    const room = this.rooms.get(event.r);
    if (!room) return;
    const time = typeof event.ts === "number" ? new Date(event.ts) : new Date();
    this.addItem(room, { kind: "message", user: event.u, text: event.c, own: this.isOwn(event.u), q: event.q, time });
    if (room.name !== this.current || document.hidden) {
      room.unread += 1;
      this.renderRooms();
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
    if (room.items.length > MAX_MESSAGES_PER_ROOM) room.items.shift();
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

  renderRoom() {
    const room = this.rooms.get(this.current);
    if (!room) return;
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
    const list = $("messages");
    list.replaceChildren();
    for (const item of room.items) this.appendItem(item, false);
    list.scrollTop = list.scrollHeight;
    this.renderMembers();
  }

  appendItem(item, scroll) {
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
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
      body.append(meta, el("p", "text", item.text));
      node.append(avatar, body);
    }
    list.append(node);
    if (scroll && (atBottom || item.own)) list.scrollTop = list.scrollHeight;
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
    });
  }

  toggleMembers(open) {
    const panel = $("members");
    const show = open ?? !panel.classList.contains("open");
    panel.classList.toggle("open", show);
    $("members-button").setAttribute("aria-expanded", String(show));
  }
}

window.roomchat = new App();
