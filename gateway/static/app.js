// Taskboard page: a board's tasks over REST, kept live over WebSocket (resuming with since=<seq>).
// User text is only ever inserted with textContent.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_FEED = 30;
  const PAGE = 100;

  const state = {
    board: 0,
    tasks: new Map(), // id -> task
    lastSeq: 0, // highest event seq applied for this board
    ws: null,
    retries: 0,
    timer: 0,
    generation: 0, // bumps when the board changes, so stale callbacks do nothing
    editing: 0, // id of the task whose title is being edited
    me: 0, // the signed-in user's id (0: unknown)
    history: new Set(), // ids of tasks whose history is open
    focus: 0, // a task to bring into view once its board is shown (a search hit)
    info: null, // the board itself: {name, description, archived, role}; null when unknown
    gone: false, // the board was deleted
    view: { assignee: "", dueBefore: "", sort: "created" }, // what the columns show, and in which order
  };
  const els = new Map(); // id -> <li>

  const userId = (() => {
    let id = Number(localStorage.getItem("taskboard.user"));
    if (!Number.isInteger(id) || id <= 0) {
      id = 1 + Math.floor(Math.random() * 1e6);
      localStorage.setItem("taskboard.user", String(id));
    }
    return id;
  })();

  // The access token (a JWT): from `#token=…` (taken out of the address at once) or the sign-in
  // field, kept in this browser's storage. With AUTH=off the gateway needs none.
  const TOKEN_KEY = "taskboard.token";
  let token = localStorage.getItem(TOKEN_KEY) || "";
  (() => {
    const m = /(?:^#|&)token=([A-Za-z0-9._-]+)/.exec(location.hash);
    if (!m) return;
    token = m[1];
    localStorage.setItem(TOKEN_KEY, token);
    const rest = location.hash.replace(/(^#|&)token=[A-Za-z0-9._-]+/, "$1").replace(/^#&/, "#");
    history.replaceState(null, "", location.pathname + location.search + (rest === "#" ? "" : rest));
  })();

  function setToken(t) {
    token = t;
    if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
    showWho();
    loadBoard(state.board || boardFromHash());
  }

  // "Signed in as user N" (from /api/me), or why not.
  async function showWho() {
    const who = $("who");
    $("sign-out").hidden = !token;
    $("sign-in").hidden = !!token;
    $("token").hidden = !!token;
    try {
      const me = await api("GET", "/api/me");
      state.me = me.user_id || 0;
      showViewers(state.viewers || []);
      who.textContent = me.auth === "off" ? "authentication off (development)"
        : `signed in as user ${me.user_id}${me.service ? " (service)" : ""}`;
    } catch (e) {
      who.textContent = token ? "token not accepted" : "not signed in";
    }
  }

  function boardFromHash() {
    const m = /board=(\d+)/.exec(location.hash);
    const b = m ? Number(m[1]) : 1;
    return b > 0 ? b : 1;
  }

  /// The task was changed by someone else since the version this page sent in If-Match.
  class Stale extends Error {}

  async function api(method, path, body, version, key) {
    let res;
    try {
      const headers = body ? { "Content-Type": "application/json" } : {};
      if (token) headers.Authorization = `Bearer ${token}`;
      if (version) headers["If-Match"] = `"${version}"`;
      if (key) headers["Idempotency-Key"] = key;
      res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    } catch {
      throw new Error("Cannot reach the server. Check your connection and try again.");
    }
    if (res.status === 204) return null;
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    if (!res.ok) {
      const why = data && data.message ? ` (${data.message})` : "";
      if (res.status === 401) {
        throw new Error(token ? `Your sign-in is no longer accepted: sign in again${why}.`
          : "Please sign in: paste your access token above.");
      }
      if (res.status === 403) throw new Error(`You are not allowed to do that${why}.`);
      if (res.status === 412) throw new Stale(data && data.message ? data.message : "changed meanwhile");
      if (data && data.error) throw new Error(data.message ? `${data.error}: ${data.message}` : data.error);
      throw new Error(`The server answered ${res.status}.`);
    }
    return data;
  }

  function showError(msg) {
    const e = $("error");
    e.textContent = msg || "";
    e.hidden = !msg;
  }

  function setConn(s) {
    const c = $("conn");
    c.className = `conn ${s}`;
    c.textContent = s;
  }

  // ---- loading and live updates ----

  async function loadBoard(board) {
    const gen = ++state.generation;
    stopSocket();
    state.board = board;
    $("board-id").value = String(board);
    state.info = null;
    showViewers([]);
    document.title = `Board ${board} · Taskboard`;
    try {
      const tasks = [];
      let head = null;
      for (let page = 1; page <= 50; page++) {
        const r = await api("GET", `/api/tasks?board_id=${board}&page=${page}&page_size=${PAGE}`);
        if (gen !== state.generation) return;
        if (head === null) head = r.head_seq;
        tasks.push(...r.tasks);
        if (page * PAGE >= r.total_count || r.tasks.length === 0) break;
      }
      let info = null;
      try { info = await api("GET", `/api/boards/${board}`); } catch { /* a board without a row yet */ }
      if (gen !== state.generation) return;
      state.info = info;
      state.gone = false;
      state.tasks.clear();
      for (const t of tasks) if (!state.tasks.has(t.id)) state.tasks.set(t.id, t);
      state.lastSeq = head || 0;
      showError("");
      render();
      connect(gen);
    } catch (e) {
      if (gen !== state.generation) return;
      showError(e.message);
      // Retrying does not help without a (new) token or a membership.
      if (/sign in|not allowed/i.test(e.message)) { setConn("offline"); return; }
      retryLater(gen, () => loadBoard(board));
    }
  }

  function stopSocket() {
    clearTimeout(state.timer);
    if (state.ws) {
      state.ws.onclose = null;
      state.ws.close(1000);
      state.ws = null;
    }
  }

  function connect(gen) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol.
    const url = `${proto}//${location.host}/ws?board_id=${state.board}&since=${state.lastSeq}`;
    const ws = token ? new WebSocket(url, ["taskboard", `bearer.${token}`]) : new WebSocket(url);
    ws.token = token; // the token in force on this socket (a refresh sent in-band replaces it)
    state.ws = ws;
    ws.onopen = () => {
      if (gen !== state.generation) return;
      state.retries = 0;
      setConn("connected");
    };
    ws.onmessage = (m) => {
      if (gen !== state.generation) return;
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      if (ev.type === "auth_ok") { ws.token = ws.refreshing; return; }
      if (ev.type === "auth_error") { showError(`Your new sign-in was not accepted: ${ev.message}.`); return; }
      onEvent(ev);
    };
    ws.onclose = (c) => {
      if (gen !== state.generation) return;
      state.ws = null;
      if (c.code === 1008 && token !== ws.token) {
        // Signed in anew meanwhile (another tab, as someone else): open the board as them.
        showWho();
        loadBoard(state.board);
        return;
      }
      if (c.code === 1008) {
        setConn("offline");
        showError("Your sign-in has expired: sign in again.");
        return;
      }
      // 4003: removed from the board; 4004: the board was deleted. Retrying cannot help.
      if (c.code === 4003 || c.code === 4004) {
        setConn("offline");
        showError(c.code === 4003 ? "You are no longer a member of this board." : "This board was deleted.");
        return;
      }
      // 1013: we fell behind; the server told us to resume, so do it at once.
      const soon = c.code === 1013;
      retryLater(gen, () => connect(gen), soon);
    };
  }

  function retryLater(gen, fn, soon = false) {
    state.retries += 1;
    // The badge describes our link to the gateway, which the page observes, not the browser's
    // guess about the network (navigator.onLine is false on hosts without a default route even
    // when the gateway is on the same machine).
    setConn(state.retries > 6 ? "offline" : "reconnecting");
    const base = soon ? 100 : Math.min(10000, 500 * 2 ** Math.min(state.retries - 1, 5));
    const delay = base / 2 + Math.random() * base / 2;
    clearTimeout(state.timer);
    state.timer = setTimeout(() => { if (gen === state.generation) fn(); }, delay);
  }

  function onEvent(ev) {
    if (ev.type === "reset") {
      // Events we missed are no longer kept: reload, then follow from the new head.
      loadBoard(state.board);
      return;
    }
    if (ev.board_id !== state.board) return;
    if (ev.type === "presence") {
      showViewers(ev.users || []);
      return;
    }
    if (typeof ev.seq === "number") {
      if (ev.seq <= state.lastSeq) return; // already applied
      state.lastSeq = ev.seq;
    }
    if (ev.type === "board_updated") {
      state.info = { ...(state.info || {}), ...ev.board };
      addFeed(ev);
      render();
      return;
    }
    if (ev.type === "member_changed") {
      addFeed(ev);
      return;
    }
    if (ev.type === "board_deleted") {
      // The final event: nothing more will come.
      state.generation++;
      stopSocket();
      state.gone = true;
      state.tasks.clear();
      setConn("offline");
      addFeed(ev);
      render();
      return;
    }
    if (ev.type === "deleted") {
      state.tasks.delete(ev.task_id);
    } else if (ev.task) {
      applyTask(ev.task);
    }
    addFeed(ev);
    render();
    if (state.history.has(ev.task_id)) loadHistory(ev.task_id);
    const li = els.get(ev.task_id);
    if (li) { li.classList.remove("flash"); void li.offsetWidth; li.classList.add("flash"); }
  }

  // Keeps the newest version of a task (REST answers and events may arrive in either order).
  function applyTask(t) {
    const cur = state.tasks.get(t.id);
    if (!cur || (t.version || 0) >= (cur.version || 0)) state.tasks.set(t.id, t);
  }

  function addFeed(ev) {
    const li = document.createElement("li");
    const when = new Date((ev.timestamp || Date.now() / 1000) * 1000).toLocaleTimeString();
    li.textContent = ev.type === "board_updated"
      ? `${when} board changed: “${ev.board.name}”${ev.board.archived ? " (archived)" : ""} (seq ${ev.seq})`
      : ev.type === "board_deleted" ? `${when} board deleted (seq ${ev.seq})`
      : ev.type === "member_changed"
        ? `${when} user ${ev.user_id} ${ev.role ? `is now ${ev.role}` : "left the board"} (seq ${ev.seq})`
        : `${when} ${ev.type} “${ev.title}” (#${ev.task_id}, seq ${ev.seq})`;
    const feed = $("feed");
    feed.prepend(li);
    while (feed.children.length > MAX_FEED) feed.lastElementChild.remove();
  }

  // ---- rendering (keyed: elements are updated in place, so an edit in progress survives) ----

  /// The order of the chosen sort: newest first, the manual order, or soonest due first.
  function compare(a, b) {
    if (state.view.sort === "position") return a.position - b.position || a.id - b.id;
    if (state.view.sort === "due") {
      if (a.due_at !== b.due_at) {
        if (!a.due_at) return 1;
        if (!b.due_at) return -1;
        return a.due_at < b.due_at ? -1 : 1;
      }
      return a.id - b.id;
    }
    return b.created_at > a.created_at ? 1 : b.created_at < a.created_at ? -1 : b.id - a.id;
  }

  function shown(t) {
    const v = state.view;
    if (v.assignee === "me" && t.assignee !== state.me) return false;
    if (v.assignee === "none" && t.assignee) return false;
    if (v.dueBefore && !(t.due_at && new Date(t.due_at) < new Date(`${v.dueBefore}T00:00:00`))) return false;
    return true;
  }

  /// A column's tasks as shown.
  function column(completed) {
    return [...state.tasks.values()].filter((t) => !!t.completed === completed && shown(t)).sort(compare);
  }

  function render() {
    const open = column(false);
    const done = column(true);
    sync($("open-list"), open);
    sync($("done-list"), done);
    for (const [id, li] of [...els.entries()]) {
      if (!state.tasks.has(id)) { li.remove(); els.delete(id); } else if (!shown(state.tasks.get(id))) li.remove();
    }
    $("open-count").textContent = String(open.length);
    $("done-count").textContent = String(done.length);
    renderBoard();
    const hit = state.focus && els.get(state.focus);
    if (hit) {
      state.focus = 0;
      hit.scrollIntoView({ block: "center" });
      hit.classList.remove("flash"); void hit.offsetWidth; hit.classList.add("flash");
    }
  }

  function sync(ul, tasks) {
    tasks.forEach((t, i) => {
      let li = els.get(t.id);
      if (!li) { li = build(t.id); els.set(t.id, li); }
      fill(li, t);
      if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
    });
    while (ul.children.length > tasks.length) ul.lastElementChild.remove();
  }

  function build(id) {
    const li = $("task-template").content.firstElementChild.cloneNode(true);
    li.dataset.id = String(id);
    li.querySelector(".toggle").addEventListener("change", (e) => toggle(id, e.target.checked));
    li.querySelector(".title").addEventListener("click", () => startEdit(id));
    li.querySelector(".delete").addEventListener("click", () => remove(id));
    li.querySelector(".show-history").addEventListener("click", () => toggleHistory(id));
    li.querySelector(".assign").addEventListener("click", () => {
      const t = state.tasks.get(id);
      const mine = t && state.me && t.assignee === state.me;
      update(id, { assignee: mine ? null : state.me });
    });
    const due = li.querySelector(".due");
    due.id = `due-${id}`;
    li.querySelector(".due-text").htmlFor = due.id;
    due.addEventListener("change", () => {
      // A date is due at the end of that day, here.
      update(id, { due_at: due.value ? new Date(`${due.value}T23:59:59`).toISOString() : null });
    });
    // Manual order: drag a task onto another (above or below its middle), or Alt+↑/↓ on the
    // focused task (focusable for that).
    li.tabIndex = 0;
    li.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(id)); });
    li.addEventListener("dragover", (e) => { if (li.draggable) { e.preventDefault(); li.classList.add("drop-target"); } });
    li.addEventListener("dragleave", () => li.classList.remove("drop-target"));
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      li.classList.remove("drop-target");
      const moved = Number(e.dataTransfer.getData("text/plain"));
      const box = li.getBoundingClientRect();
      if (moved && moved !== id) moveNextTo(moved, id, e.clientY > box.top + box.height / 2);
    });
    li.addEventListener("keydown", (e) => {
      if (!e.altKey || state.view.sort !== "position" || !["ArrowUp", "ArrowDown"].includes(e.key)) return;
      const t = state.tasks.get(id);
      if (!t) return;
      e.preventDefault();
      const col = column(!!t.completed);
      const i = col.findIndex((x) => x.id === id);
      const other = col[e.key === "ArrowUp" ? i - 1 : i + 1];
      if (other) moveNextTo(id, other.id, e.key === "ArrowDown");
    });
    return li;
  }

  function fill(li, t) {
    li.classList.toggle("done", t.completed);
    const box = li.querySelector(".toggle");
    box.checked = t.completed;
    box.setAttribute("aria-label", `${t.completed ? "Reopen" : "Mark done"}: ${t.title}`);
    const title = li.querySelector(".title");
    if (title) title.textContent = t.title;
    li.querySelector(".description").textContent = t.description || "";
    li.querySelector(".delete").setAttribute("aria-label", `Delete: ${t.title}`);
    li.querySelector(".who-on").textContent = t.assignee ? `@${t.assignee === state.me ? "you" : `user ${t.assignee}`}` : "";
    const mine = state.me && t.assignee === state.me;
    const assign = li.querySelector(".assign");
    assign.textContent = mine ? "Unassign" : "Assign to me";
    assign.setAttribute("aria-label", `${mine ? "Unassign" : "Assign to me"}: ${t.title}`);
    assign.hidden = !state.me;
    const label = li.querySelector(".due-label");
    const due = t.due_at ? new Date(t.due_at) : null;
    label.textContent = due ? `due ${due.toLocaleDateString()}` : "";
    label.classList.toggle("overdue", !!due && !t.completed && due < new Date());
    const input = li.querySelector(".due");
    if (document.activeElement !== input) input.value = due ? localDate(due) : "";
    li.draggable = state.view.sort === "position";
  }

  // ---- the board itself: name, archived, deleted; who is viewing it ----

  /// The people viewing this board now (from the gateway's presence frames), me first.
  function showViewers(users) {
    state.viewers = users;
    const ul = $("viewers");
    const sorted = [...users].sort((a, b) => (b === state.me) - (a === state.me) || a - b);
    ul.replaceChildren(...sorted.map((u) => {
      const li = document.createElement("li");
      const me = u === state.me;
      li.className = me ? "me" : "";
      li.textContent = me ? "you" : `U${u}`;
      li.title = me ? "you" : `user ${u}`;
      return li;
    }));
    ul.setAttribute("aria-label", `Viewing now: ${sorted.map((u) => (u === state.me ? "you" : `user ${u}`)).join(", ")}`);
  }

  function renderBoard() {
    const info = state.info;
    const name = info && info.name ? info.name : `Board ${state.board}`;
    const title = $("board-title");
    if (!title.hidden) title.textContent = name;
    document.title = `${name} · Taskboard`;
    const archived = !!(info && info.archived);
    const readOnly = archived || state.gone;
    for (const el of $("create-form").elements) el.disabled = readOnly;
    for (const el of document.querySelectorAll(".task .toggle, .task .delete, .task .title, .task .assign, .task .due")) el.disabled = readOnly;
    $("board-archive").textContent = archived ? "Unarchive" : "Archive";
    for (const id of ["board-rename", "board-archive", "board-delete"]) {
      $(id).hidden = !info || state.gone;
    }
    $("board-rename").disabled = archived;
    const note = $("board-note");
    note.hidden = !readOnly;
    note.textContent = state.gone ? "This board was deleted, with all its tasks."
      : archived ? "This board is archived: read-only until it is unarchived." : "";
  }

  function changeBoard(body) {
    return mutate(async () => {
      const b = await api("PUT", `/api/boards/${state.board}`, body);
      state.info = b;
      renderBoard();
    });
  }

  $("board-rename").addEventListener("click", () => {
    const title = $("board-title");
    if (title.hidden || !state.info) return;
    const input = document.createElement("input");
    input.value = state.info.name || "";
    input.maxLength = 200;
    input.setAttribute("aria-label", "Board name");
    title.hidden = true;
    title.after(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const name = input.value.trim();
      if (save && name && name !== state.info.name) await changeBoard({ name });
      input.remove();
      title.hidden = false;
      renderBoard();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      if (e.key === "Escape") { e.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  });

  $("board-archive").addEventListener("click", () => {
    changeBoard({ archived: !(state.info && state.info.archived) });
  });

  // Deleting takes two clicks: the first arms the button for a few seconds.
  let armed = 0;
  $("board-delete").addEventListener("click", () => {
    const btn = $("board-delete");
    if (!armed) {
      btn.textContent = "Really delete board and all its tasks?";
      armed = setTimeout(() => { armed = 0; btn.textContent = "Delete board"; }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    btn.textContent = "Delete board";
    mutate(async () => { await api("DELETE", `/api/boards/${state.board}`); });
  });

  // ---- history: who changed what, when ----

  function toggleHistory(id) {
    const li = els.get(id);
    if (!li) return;
    const open = !state.history.has(id);
    if (open) state.history.add(id); else state.history.delete(id);
    li.querySelector(".show-history").setAttribute("aria-expanded", String(open));
    li.querySelector(".history").hidden = !open;
    if (open) loadHistory(id);
  }

  async function loadHistory(id) {
    const gen = state.generation;
    let r;
    try {
      r = await api("GET", `/api/tasks/${id}/events?limit=100`);
    } catch (e) {
      showError(e.message);
      return;
    }
    const li = els.get(id);
    if (gen !== state.generation || !li || !state.history.has(id)) return;
    const ol = li.querySelector(".history");
    ol.replaceChildren(...r.events.map((ev, i) => {
      const item = document.createElement("li");
      const when = new Date(ev.committed_at).toLocaleString();
      item.textContent = `${when}: ${actorName(ev.actor)} ${describe(r.events[i - 1], ev)}`;
      return item;
    }));
  }

  function actorName(actor) {
    if (actor === null || actor === undefined) return "someone";
    return actor === state.me ? "you" : `user ${actor}`;
  }

  /// What an event changed, in words (compared with the task's previous event, when on the page).
  function describe(prev, ev) {
    if (ev.type === "created") return `created “${ev.task.title}”`;
    if (ev.type === "deleted") return "deleted it";
    if (!prev || !prev.task) return "changed it";
    const a = prev.task;
    const b = ev.task;
    const what = [];
    if (a.title !== b.title) what.push(`renamed “${a.title}” → “${b.title}”`);
    if (a.description !== b.description) what.push("edited the description");
    if (a.completed !== b.completed) what.push(b.completed ? "marked it done" : "reopened it");
    return what.length ? what.join(", ") : "saved it unchanged";
  }

  // ---- search ----

  /// Highlighted text: the pieces that matched in <mark>, all of it as text.
  function marked(pieces) {
    return pieces.map((p) => {
      if (!p.match) return document.createTextNode(p.text);
      const m = document.createElement("mark");
      m.textContent = p.text;
      return m;
    });
  }

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("search").value.trim();
    if (!q) { showError("Type something to search for."); return; }
    const scope = $("search-scope").value === "board" ? `&board_id=${state.board}` : "";
    mutate(async () => {
      const r = await api("GET", `/api/search?q=${encodeURIComponent(q)}${scope}&page_size=50`);
      $("search-count").textContent = r.total_count > r.hits.length
        ? `${r.hits.length} of ${r.total_count}` : String(r.total_count);
      $("search-list").replaceChildren(...r.hits.map((h) => {
        const li = document.createElement("li");
        const open = document.createElement("button");
        open.type = "button";
        open.className = "hit";
        open.append(...marked(h.title));
        open.addEventListener("click", () => {
          state.focus = h.task.id;
          if (h.task.board_id === state.board) render();
          else location.hash = `board=${h.task.board_id}`;
        });
        const where = document.createElement("span");
        where.className = "where";
        where.textContent = ` board ${h.task.board_id}${h.task.completed ? " · done" : ""}`;
        li.append(open, where);
        if (h.snippet.some((p) => p.text.trim())) {
          const snip = document.createElement("span");
          snip.className = "snippet";
          snip.append(...marked(h.snippet));
          li.append(snip);
        }
        return li;
      }));
      if (!r.hits.length) {
        const li = document.createElement("li");
        li.textContent = "Nothing found.";
        $("search-list").append(li);
      }
      $("search-results").hidden = false;
    });
  });
  $("search-close").addEventListener("click", () => { $("search-results").hidden = true; });

  function localDate(d) {
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  $("filter-assignee").addEventListener("change", (e) => { state.view.assignee = e.target.value; render(); });
  $("filter-due").addEventListener("change", (e) => { state.view.dueBefore = e.target.value; render(); });
  $("sort").addEventListener("change", (e) => { state.view.sort = e.target.value; render(); });

  // ---- actions ----

  async function mutate(fn) {
    try {
      await fn();
      showError("");
    } catch (e) {
      showError(e.message);
      render();
    }
  }

  /// A change of task `id` made only if it is still at `version` (what the person saw when they
  /// acted). If someone else changed it meanwhile, nothing is overwritten: the page shows their
  /// version and says so.
  async function change(id, method, body, version) {
    try {
      return await api(method, `/api/tasks/${id}`, body, version);
    } catch (e) {
      if (!(e instanceof Stale)) throw e;
      let now = null;
      try { now = await api("GET", `/api/tasks/${id}`); } catch { /* deleted meanwhile */ }
      if (!now) {
        state.tasks.delete(id);
        throw new Error("Someone else deleted this task meanwhile; your change was not applied.");
      }
      applyTask(now);
      throw new Error(`Someone else changed this task meanwhile: it is now “${now.title}”` +
        `${now.completed ? " (done)" : ""}. Your change was not applied; make it again if you still want it.`);
    }
  }

  function versionOf(id) {
    const t = state.tasks.get(id);
    return t ? t.version : undefined;
  }

  /// A change of some fields of task `id`, made only if it is still at the version shown.
  function update(id, body) {
    mutate(async () => applyTask(await change(id, "PUT", body, versionOf(id)))).then(render);
  }

  /// Moves task `id` just before (or after) task `target` in the manual order: one change, its
  /// position halfway between its new neighbours.
  function moveNextTo(id, target, after) {
    const t = state.tasks.get(target);
    if (!t) return;
    const col = column(!!t.completed).filter((x) => x.id !== id);
    const at = col.findIndex((x) => x.id === target) + (after ? 1 : 0);
    const prev = col[at - 1];
    const next = col[at];
    let position;
    if (prev && next) position = (prev.position + next.position) / 2;
    else if (next) position = next.position - 1;
    else if (prev) position = prev.position + 1;
    else return;
    if (prev && next && (position === prev.position || position === next.position)) {
      showError("No room left between these two tasks: move one of them elsewhere first.");
      return;
    }
    update(id, { position });
  }

  function toggle(id, completed) {
    mutate(async () => applyTask(await change(id, "PUT", { completed }, versionOf(id)))).then(render);
  }

  function remove(id) {
    mutate(async () => {
      await change(id, "DELETE", null, versionOf(id));
      state.tasks.delete(id);
    }).then(render);
  }

  function startEdit(id) {
    const li = els.get(id);
    const t = state.tasks.get(id);
    if (!li || !t || state.editing) return;
    state.editing = id;
    const btn = li.querySelector(".title");
    const input = document.createElement("input");
    input.className = "edit";
    input.value = t.title;
    input.maxLength = 500;
    input.setAttribute("aria-label", "Edit title");
    btn.replaceWith(input);
    input.focus();
    input.select();
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const title = input.value.trim();
      if (save && title && title !== t.title) {
        // The version the edit started from: a change made meanwhile is not overwritten.
        await mutate(async () => applyTask(await change(id, "PUT", { title }, t.version)));
      }
      state.editing = 0;
      input.replaceWith(btn);
      render();
      btn.focus();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      if (e.key === "Escape") { e.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  /// The last create sent and its Idempotency-Key, until it succeeds.
  let lastCreate = null;

  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  $("create-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = e.target;
    const title = form.title.value.trim();
    if (!title) { showError("Title is required"); return; }
    const body = { board_id: state.board, title, description: form.description.value, created_by: userId };
    // Sending the same task again after a failure (the answer may have been lost after the server
    // created it) reuses its key: the server answers the first result instead of a duplicate.
    const same = lastCreate && JSON.stringify(lastCreate.body) === JSON.stringify(body);
    const key = same ? lastCreate.key : newKey();
    lastCreate = { body, key };
    mutate(async () => {
      const t = await api("POST", "/api/tasks", body, undefined, key);
      lastCreate = null;
      applyTask(t);
      form.reset();
      form.title.focus();
    }).then(render);
  });

  $("board-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const b = Number($("board-id").value);
    if (!Number.isInteger(b) || b <= 0) { showError("Board ID must be a positive integer"); return; }
    location.hash = `board=${b}`;
  });

  $("new-board-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("board-name").value.trim();
    if (!name) { showError("Board name is required"); return; }
    mutate(async () => {
      const b = await api("POST", "/api/boards", { name });
      $("board-name").value = "";
      location.hash = `board=${b.id}`;
    });
  });

  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    $("token").value = "";
    if (!/^[A-Za-z0-9._-]+$/.test(t)) { showError("That does not look like an access token."); return; }
    setToken(t);
  });
  $("sign-out").addEventListener("click", () => setToken(""));

  // Signed in (or out) in another tab. The same user's fresh token goes to the open socket
  // in-band, so it outlives the old token without reconnecting; a token for someone else gets the
  // socket closed (1008), and the board is opened again as them.
  window.addEventListener("storage", (e) => {
    if (e.key !== TOKEN_KEY || (e.newValue || "") === token) return;
    token = e.newValue || "";
    const ws = state.ws;
    if (token && ws && ws.readyState === WebSocket.OPEN && ws.token) {
      ws.refreshing = token;
      ws.send(JSON.stringify({ type: "auth", token }));
    } else {
      setToken(token);
    }
  });

  window.addEventListener("hashchange", () => loadBoard(boardFromHash()));
  showWho();
  window.addEventListener("online", () => { if (!state.ws) loadBoard(state.board); });
  loadBoard(boardFromHash());
})();
