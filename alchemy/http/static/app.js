// alchemy dashboard. Plain script, no dependencies. Everything that comes from the server or
// the URL is put on the page as text (textContent, text nodes, attribute values), never
// parsed as HTML; the Content-Security-Policy forbids inline script besides.
"use strict";
(() => {
  const TOKEN_KEY = "alchemy-admin-token";
  const POLL_MS = 2000;
  const REFRESH_MS = 1000; // a view refetched at most this often on live changes
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let access = { token_configured: false, job_data_needs_token: false };
  let overview = null;
  let pendingRender = false;
  let view = readHash();
  let dead = { total: null, entries: [] };

  // -- building the page: elements and text only ---------------------------------------
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    el.append(...children);
    return el;
  }
  const text = (value) => h("pre", { class: "text" }, value);
  function fill(tbody, rows, empty, columns) {
    tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: columns, class: "muted" }, empty))]));
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 120) return `${seconds.toFixed(1)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }
  const when = (ms) => (typeof ms === "number" ? new Date(ms).toISOString().replace("T", " ").slice(0, 23) : "–");
  const errorText = (e) => (e && typeof e === "object" ? `${e.type}: ${e.message}` : "–");

  // -- the server ------------------------------------------------------------------------
  function headers(json) {
    const out = { Accept: "application/json" };
    if (token) out.Authorization = `Bearer ${token}`;
    if (json) out["Content-Type"] = "application/json";
    return out;
  }
  async function api(path, method = "GET", body = undefined) {
    const response = await fetch(path, {
      method, headers: headers(body !== undefined), cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }
  const queuePath = (queue) => `api/queues/${enc(queue)}`;

  // -- the connection: a live stream, polling while it is down, nothing while hidden ------
  const conn = { ctrl: null, retry: 1000, retryTimer: 0, pollTimer: 0, live: false };
  function setConn(kind, label) {
    const el = $("conn");
    el.className = `pill ${kind}`;
    el.textContent = label;
  }
  async function openStream() {
    clearTimeout(conn.retryTimer);
    if (document.hidden) return;
    if (conn.ctrl) conn.ctrl.abort();
    const ctrl = new AbortController();
    conn.ctrl = ctrl;
    try {
      const response = await fetch("api/live", {
        headers: headers(false), cache: "no-store", credentials: "omit", signal: ctrl.signal,
      });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      conn.live = true;
      conn.retry = 1000;
      stopPolling();
      setConn("live", "live");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          onEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
      throw new Error("the stream ended");
    } catch (error) {
      if (ctrl.signal.aborted) return;
      conn.live = false;
      setConn("down", "disconnected – reconnecting");
      startPolling();
      conn.retryTimer = setTimeout(openStream, conn.retry);
      conn.retry = Math.min(conn.retry * 2, 8000);
    }
  }
  function onEvent(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (!data.length) return;
    const body = JSON.parse(data.join("\n"));
    if (event === "overview") applyOverview(body);
    else if (event === "problem") showProblem(body.error);
  }
  function startPolling() {
    if (conn.pollTimer || document.hidden) return;
    conn.pollTimer = setInterval(poll, POLL_MS);
  }
  function stopPolling() {
    clearInterval(conn.pollTimer);
    conn.pollTimer = 0;
  }
  async function poll() {
    try {
      applyOverview(await api("api/dashboard"));
      if (!conn.live) setConn("polling", "polling (live updates unavailable)");
    } catch (error) {
      if (!conn.live) setConn("down", "disconnected – reconnecting");
    }
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (conn.ctrl) conn.ctrl.abort();
      conn.ctrl = null;
      conn.live = false;
      clearTimeout(conn.retryTimer);
      stopPolling();
      setConn("hidden", "paused while hidden");
    } else {
      setConn("polling", "reconnecting…");
      openStream();
      poll();
    }
  });

  // -- the overview ----------------------------------------------------------------------
  function showProblem(message) {
    const el = $("problem");
    el.hidden = !message;
    el.textContent = message || "";
  }
  function applyOverview(body) {
    showProblem("");
    overview = body;
    access = body.access || access;
    if ($("confirm").open) pendingRender = true;
    else render();
    const changed = body.changes && view.queue && body.changes[view.queue];
    const current = body.queues.find((q) => q.queue === view.queue);
    if (current && (changed || current.dead !== dead.total)) {
      if (view.job) later("job", loadJob);
      if (current.dead !== dead.total) later("dead", loadDead);
    }
  }
  // At once when it last ran long enough ago, else once when that time is up.
  const timers = {};
  const ranAt = {};
  function later(name, action) {
    if (timers[name]) return;
    const wait = Math.max(0, (ranAt[name] || 0) + REFRESH_MS - Date.now());
    timers[name] = setTimeout(() => { timers[name] = 0; ranAt[name] = Date.now(); action(); }, wait);
  }
  function render() {
    pendingRender = false;
    if (!overview) return;
    $("listener").textContent = `listener ${overview.listener}`;
    renderMode();
    fill($("queues").tBodies[0], overview.queues.map(queueRow), "no queues configured", 10);
    fill($("processes").tBodies[0], overview.processes.map(processRow), "no process serves these queues", 7);
  }
  function renderMode() {
    let mode;
    if (!access.token_configured) mode = "Read-only: no admin token is configured on the server.";
    else if (!token) mode = "Read-only: type the admin token to retry, purge or pause.";
    else mode = "Token in use (kept in this tab only).";
    $("mode").textContent = mode;
    const canAct = Boolean(token && access.token_configured);
    for (const el of document.querySelectorAll("[data-needs-token]")) {
      el.disabled = !canAct;
      el.title = canAct ? "" : "needs the admin token";
    }
  }
  function chart(perMinute) {
    if (!perMinute) return h("span", { class: "muted" }, "no events written");
    const top = Math.max(1, ...perMinute.completed.map((c, i) => c + perMinute.failed[i]));
    const bars = [];
    perMinute.completed.forEach((done, i) => {
      const failed = perMinute.failed[i];
      const x = i * 3;
      const hd = Math.round((done / top) * 24);
      const hf = Math.round((failed / top) * 24);
      const at = new Date(perMinute.start_ms + i * 60000).toISOString().slice(11, 16);
      const title = svg("title", {}, `${at} UTC: ${done} completed, ${failed} failed`);
      bars.push(svg("g", {}, title,
        svg("rect", { class: "c", x, y: 24 - hd, width: 2, height: hd }),
        svg("rect", { class: "f", x, y: 24 - hd - hf, width: 2, height: hf })));
    });
    const sum = (list) => list.reduce((a, b) => a + b, 0);
    const done = sum(perMinute.completed);
    const failed = sum(perMinute.failed);
    const label = `${done} completed, ${failed} failed in the last hour`;
    return h("div", {},
      svg("svg", { class: "chart", width: 180, height: 24, viewBox: "0 0 180 24", role: "img", "aria-label": label }, ...bars),
      h("span", { class: "muted hour", "data-completed": done, "data-failed": failed }, label));
  }
  function badges(q) {
    const out = [];
    if (q.held) out.push(h("span", { class: "badge bad" }, (q.held.dependency || "").startsWith("provider:") ? `held: ${q.held.dependency.slice(9)} spend limit` : `held: ${q.held.dependency || "?"} down`));
    else if (q.paused) out.push(h("span", { class: "badge warn" }, q.paused_for_ms > 0 ? `paused ${duration(q.paused_for_ms / 1000)}` : "paused"));
    const budgetHeld = Object.values(q.budget_held || {}).reduce((a, b) => a + b, 0);
    if (budgetHeld) out.push(h("span", { class: "badge warn", "data-badge": "budget-exhausted", title: Object.entries(q.budget_held).map(([scope, n]) => `${scope}: ${n}`).join("\n") }, `${budgetHeld} held: budget_exhausted`));
    if (!q.serving) out.push(h("span", { class: "badge bad", "data-badge": "no-process" }, "no process serving"));
    if (!out.length) out.push(h("span", { class: "badge ok" }, `${q.serving} serving`));
    if (q.dead_trimmed) out.push(h("span", { class: "badge warn" }, `${q.dead_trimmed} dead dropped at the cap`));
    return out;
  }
  function queueRow(q) {
    const rate = q.rate ? `${q.rate.limit} per ${q.rate.period_s} s${q.rate.burst ? ` (+${q.rate.burst} burst)` : ""}` : "none";
    const paused = q.paused && !q.held;
    return h("tr", { "data-queue": q.queue, class: q.queue === view.queue ? "selected" : null },
      h("th", { scope: "row" }, q.queue),
      h("td", { class: "n", "data-count": "wait" }, q.wait),
      h("td", { class: "n", "data-count": "processing" }, q.processing),
      h("td", { class: "n", "data-count": "delayed" }, q.delayed),
      h("td", { class: "n", "data-count": "dead" }, q.dead),
      h("td", { class: "n" }, duration(q.oldest_wait_s)),
      h("td", {}, chart(q.per_minute)),
      h("td", {}, badges(q)),
      h("td", {}, rate),
      h("td", {},
        h("button", { type: "button", onclick: () => go({ queue: q.queue }), "aria-label": `Dead letters of ${q.queue}` }, "Dead letters"), " ",
        h("button", {
          type: "button", "data-needs-token": true, disabled: !(token && access.token_configured),
          onclick: () => act(paused ? "resume" : "pause", q.queue),
        }, paused ? "Resume" : "Pause")));
  }
  function processRow(p) {
    return h("tr", {},
      h("th", { scope: "row" }, p.identity, p.alive ? "" : h("span", { class: "badge bad" }, "gone")),
      h("td", {}, p.host || "–"), h("td", { class: "n" }, p.pid ?? "–"),
      h("td", { class: "n" }, duration(p.heartbeat_age_s)), h("td", { class: "n" }, p.in_flight),
      h("td", { class: "n" }, duration(p.uptime_s)), h("td", {}, p.queues.join(", ")));
  }

  // -- actions: the admin API's POST routes, with the token ---------------------------
  function note(message) { $("dead-note").textContent = message; }
  async function act(action, queue, body = undefined) {
    try {
      const result = await api(`${queuePath(queue)}/${action}`, "POST", body);
      const done = action.startsWith("dead/retry") ? `retried ${result.retried}` : action.startsWith("dead/purge") ? `purged ${result.purged}` : `${action}d`;
      note(`${queue}: ${done}.`);
      await poll();
      if (view.queue === queue) await loadDead();
    } catch (error) {
      note(error.status === 401 ? "Refused: the admin token is missing or wrong." : `Refused: ${error.message}`);
    }
  }
  function confirmDialog(title, message, typed) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = message;
    const input = $("confirm-input");
    $("confirm-typed").hidden = !typed;
    input.value = "";
    const ok = $("confirm-ok");
    ok.disabled = Boolean(typed);
    input.oninput = () => { ok.disabled = input.value !== typed; };
    return new Promise((resolve) => {
      const finish = (answer) => {
        $("confirm-form").onsubmit = null;
        $("confirm-cancel").onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        if (pendingRender) render();
        resolve(answer);
      };
      $("confirm-form").onsubmit = (e) => { e.preventDefault(); finish(!ok.disabled); };
      $("confirm-cancel").onclick = () => finish(false);
      dialog.onclose = () => finish(false);
      dialog.showModal();
      (typed ? input : $("confirm-cancel")).focus();
    });
  }
  $("retry-all").addEventListener("click", async () => {
    const queue = view.queue;
    const q = overview && overview.queues.find((x) => x.queue === queue);
    const count = q ? q.dead : dead.total;
    if (await confirmDialog(`Retry all dead jobs of ${queue}?`, `${count} dead jobs go back to the wait list (truncated too_large entries are skipped).`)) {
      await act("dead/retry", queue, { all: true });
    }
  });
  $("purge").addEventListener("click", async () => {
    const queue = view.queue;
    if (await confirmDialog(`Purge every dead job of ${queue}?`, "They are deleted for good.", queue)) {
      await act("dead/purge", queue, { all: true });
    }
  });

  // -- the token -------------------------------------------------------------------------
  $("token").value = token;
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    renderMode();
    route();
    openStream();
  });
  $("token-forget").addEventListener("click", () => {
    token = "";
    $("token").value = "";
    sessionStorage.removeItem(TOKEN_KEY);
    renderMode();
    route();
  });

  // -- views: #queue=Q (its dead letters) and &job=ID (one job) -------------------------
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    return {
      queue: params.get("queue"), job: params.get("job"),
      offset: Math.max(0, parseInt(params.get("offset") || "0", 10) || 0),
      at: params.has("at") ? parseInt(params.get("at"), 10) : null,
      total: params.has("total") ? parseInt(params.get("total"), 10) : null,
    };
  }
  function go(next) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(next)) if (value !== null && value !== undefined) params.set(key, value);
    location.hash = params.toString();
  }
  window.addEventListener("hashchange", () => { view = readHash(); dead.total = null; route(); render(); });
  function route() {
    $("dead").hidden = !view.queue;
    $("job").hidden = !view.job;
    if (view.queue) {
      $("dead-title").textContent = `Dead letters of ${view.queue}`;
      loadDead();
    }
    if (view.job) loadJob();
  }
  const needsToken = () => access.job_data_needs_token && !token;

  async function loadDead() {
    const queue = view.queue;
    if (!queue) return;
    const limit = parseInt($("page-size").value, 10);
    if (needsToken()) {
      note("Dead-letter entries carry job data: type the admin token to see them.");
      fill($("dead-list").tBodies[0], [], "needs the admin token", 7);
      $("groups").replaceChildren();
      return;
    }
    try {
      const [page, groups] = await Promise.all([
        api(`${queuePath(queue)}/dead?offset=${view.offset}&limit=${limit}&preview=300`),
        api(`${queuePath(queue)}/dead/groups`),
      ]);
      dead = { total: page.total, entries: page.entries };
      const last = Math.min(page.total, view.offset + page.entries.length);
      $("page-info").textContent = page.total ? `${view.offset + 1}–${last} of ${page.total}, newest first` : "none";
      $("prev").disabled = view.offset === 0;
      $("next").disabled = last >= page.total;
      fill($("dead-list").tBodies[0], page.entries.map((e, i) => deadRow(queue, e, view.offset + i, page.total)), "no dead jobs", 7);
      renderGroups(groups);
      renderMode();
    } catch (error) {
      note(`Could not read the dead letters: ${error.message}`);
    }
  }
  function renderGroups(groups) {
    if (!groups.groups.length) { $("groups").replaceChildren(); return; }
    const caption = groups.looked_at < groups.total
      ? `By reason and error type, among the newest ${groups.looked_at} of ${groups.total}`
      : `By reason and error type (all ${groups.total})`;
    $("groups").replaceChildren(h("table", { class: "groups" }, h("caption", {}, caption),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Reason"), h("th", { scope: "col" }, "Error type"), h("th", { scope: "col", class: "n" }, "Count"))),
      h("tbody", {}, groups.groups.map((g) => h("tr", {}, h("td", {}, g.reason), h("td", {}, g.error_type), h("td", { class: "n" }, g.count))))));
  }
  function deadRow(queue, entry, offset, total) {
    const id = typeof entry.id === "string" ? entry.id : null;
    const payload = entry.job !== undefined ? entry.job : entry.job_b64 !== undefined ? `(base64) ${entry.job_b64}` : "";
    return h("tr", {},
      h("td", {}, id === null ? h("span", { class: "muted" }, "(no id)")
        : h("button", { type: "button", class: "link", onclick: () => go({ queue, job: id, at: offset, total, offset: view.offset }) }, id)),
      h("td", {}, entry.reason), h("td", {}, h("div", { class: "text" }, errorText(entry.error))),
      h("td", { class: "n" }, entry.attempts ?? "–"), h("td", {}, when(entry.dead_at_ms)),
      h("td", {}, h("div", { class: "text" }, payload)),
      h("td", {}, id === null || entry.truncated ? "" : h("button", {
        type: "button", "data-needs-token": true, disabled: !(token && access.token_configured),
        onclick: () => act("dead/retry", queue, { id }), "aria-label": `Retry ${id}`,
      }, "Retry")));
  }
  $("prev").addEventListener("click", () => go({ queue: view.queue, offset: Math.max(0, view.offset - parseInt($("page-size").value, 10)) }));
  $("next").addEventListener("click", () => go({ queue: view.queue, offset: view.offset + parseInt($("page-size").value, 10) }));
  $("page-size").addEventListener("change", () => loadDead());
  $("find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("find-id").value;
    if (id) go({ queue: view.queue, job: id });
  });

  // -- one job: its record (progress, result, attempts) and its dead-letter entry --------
  async function loadJob(full = false) {
    const { queue, job } = view;
    if (!queue || !job) return;
    $("job-title").textContent = `Job ${job} in ${queue}`;
    const body = $("job-body");
    if (needsToken()) {
      body.replaceChildren(h("p", { class: "muted" }, "Job data needs the admin token."));
      return;
    }
    let record = null;
    let entry = null;
    let searched = null;
    const parts = [];
    try {
      record = await api(`${queuePath(queue)}/jobs/${enc(job)}`);
    } catch (error) {
      parts.push(h("p", { class: "muted", "data-state": "unknown" }, error.status === 404 ? "No record of this job: waiting for its first attempt, expired, or never enqueued." : `Could not read its record: ${error.message}`));
    }
    try {
      if (view.at !== null && view.total !== null) {
        entry = (await api(`${queuePath(queue)}/dead/entry?id=${enc(job)}&offset=${view.at}&total=${view.total}&full=${full ? 1 : 0}`)).entry;
      } else if (!record || record.state === "dead") {
        const found = await api(`${queuePath(queue)}/dead/find?id=${enc(job)}`);
        searched = found.searched;
        if (found.found) {
          entry = (await api(`${queuePath(queue)}/dead/entry?id=${enc(job)}&offset=${found.found.offset}&total=${overview ? (overview.queues.find((q) => q.queue === queue) || {}).dead || 0 : 0}&full=${full ? 1 : 0}`)).entry;
        }
      }
    } catch (error) {
      if (error.status !== 404) parts.push(h("p", { class: "muted" }, `Dead-letter entry: ${error.message}`));
    }
    if (record) parts.push(...recordParts(record));
    if (entry) parts.push(...entryParts(entry));
    else if (searched !== null) parts.push(h("p", { class: "muted" }, `Not among the newest ${searched} dead-letter entries.`));
    body.replaceChildren(...parts);
  }
  function recordParts(r) {
    const fraction = typeof r.progress === "number" ? r.progress : null;
    const facts = [["State", r.state], ["Attempt", r.attempt], ["Worker", r.worker], ["Updated", when(r.updated_ms)],
      ["First started", when(r.first_started_ms)], ["Finished", when(r.finished_ms)], ["Reason", r.reason || "–"],
      ["Last error", errorText(r.last_error)], ["Record expires in", duration(r.expires_in_s)]];
    const runs = Array.isArray(r.attempts) ? r.attempts : [];
    return [
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k.toLowerCase() }, v ?? "–")])),
      h("p", {}, "Progress: ",
        h("progress", { max: 1, value: fraction ?? 0, "aria-label": "progress", "aria-valuetext": fraction === null ? "none reported" : `${Math.round(fraction * 100)}%` }),
        " ", h("span", { id: "job-progress" }, fraction === null ? "none reported" : `${Math.round(fraction * 100)}%`),
        r.step ? h("span", { id: "job-step" }, ` – ${r.step}`) : ""),
      h("h3", {}, "Result"),
      r.result === null || r.result === undefined ? h("p", { class: "muted" }, "none") : text(JSON.stringify(r.result, null, 2)),
      resultLink(r.result),
      h("h3", {}, `Attempts (${runs.length}${r.attempts_dropped ? `, and ${r.attempts_dropped} older` : ""})`),
      h("ol", { class: "runs" }, runs.map((run) => h("li", {},
        `#${run.attempt} ${run.outcome} – started ${when(run.started_ms)}, ${typeof run.duration_ms === "number" ? `${run.duration_ms} ms` : "–"}, ${run.worker}`,
        run.error ? h("div", { class: "text" }, errorText(run.error)) : ""))),
    ];
  }
  // A result that carries a URL (a media job's image) gets a link to it; only http(s).
  function resultLink(result) {
    const url = result && typeof result === "object" ? result.url : null;
    if (typeof url !== "string" || !/^https?:\/\//i.test(url)) return "";
    return h("p", {}, h("a", { id: "job-result-url", href: url, target: "_blank", rel: "noopener noreferrer" }, "Open the result's URL"));
  }
  function entryParts(entry) {
    const payload = entry.job !== undefined ? entry.job : entry.job_b64 !== undefined ? `(base64) ${entry.job_b64}` : "";
    const parts = [h("h3", {}, "Dead-letter entry"),
      h("p", {}, `${entry.reason} after ${entry.attempts ?? "?"} attempts, ${when(entry.dead_at_ms)}: `, h("span", { class: "text" }, errorText(entry.error))),
      h("h3", {}, "Payload"), text(payload)];
    if (entry.job_cut) {
      parts.push(h("button", { type: "button", onclick: () => loadJob(true) }, `Load the full ${entry.job_chars} characters`));
    }
    return parts;
  }

  // -- start -----------------------------------------------------------------------------
  setConn("polling", "connecting…");
  poll().then(() => route());
  openStream();
})();
