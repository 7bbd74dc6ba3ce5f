// MLOC status page: shared helpers. Plain JS (no build step). Data never goes through innerHTML.
"use strict";

const MLOC = (() => {
  const KEY = "mloc_token";
  let clockOffset = 0; // server clock minus this browser's clock, seconds

  class AuthError extends Error {}

  const token = () => localStorage.getItem(KEY) || "";

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }

  async function api(path, opts = {}) {
    const resp = await fetch(path, Object.assign({}, opts, { headers: authHeaders(opts.headers) }));
    if (resp.status === 401) throw new AuthError("a valid token is needed");
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error((body.error && body.error.message) || "HTTP " + resp.status);
    return body;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style") node.setAttribute("style", v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const now = () => Date.now() / 1000 + clockOffset;
  const setServerTime = (serverTime, sentAt) => { clockOffset = serverTime - (sentAt + Date.now() / 1000) / 2; };

  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  const ago = (ts) => (ts ? duration(now() - ts) + " ago" : "–");
  const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "–");

  function percentOf(progress) {
    if (!progress) return null;
    if (typeof progress.percent === "number") return progress.percent;
    if (progress.step != null && progress.total) return (100 * progress.step) / progress.total;
    return null;
  }

  function eta(task) {
    const p = task.progress;
    if (p && typeof p.eta_s === "number") return p.eta_s;
    const pct = percentOf(p);
    if (!pct || pct <= 0 || !task.started_at) return null;
    const elapsed = now() - task.started_at;
    return (elapsed * (100 - pct)) / pct;
  }

  function bar(progress) {
    const pct = percentOf(progress);
    const shown = pct === null ? "starting…" : pct.toFixed(pct < 10 ? 1 : 0) + "%";
    const fill = el("span", { style: "width:" + Math.min(100, Math.max(0, pct || 0)).toFixed(1) + "%" });
    const b = el("div", { class: "bar", role: "progressbar", "aria-valuenow": pct === null ? "" : pct.toFixed(2) },
      fill, el("em", { text: shown }));
    return b;
  }

  const badge = (state) => el("span", { class: "badge " + state, text: state });
  const taskLink = (t) => el("a", { href: "/tasks/" + encodeURIComponent(t.id), title: t.id }, t.name || t.id);
  const short = (text, n) => (text && text.length > n ? text.slice(0, n - 1) + "…" : text || "");

  function fill(tbody, rows, columns, emptyText) {
    const out = rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: columns, text: emptyText }))];
    tbody.replaceChildren(...out);
  }

  // Session: show the token form on a 401, keep the token in localStorage, show who we are.
  function session(onReady) {
    const login = document.getElementById("login");
    const main = document.getElementById("main");
    const form = document.getElementById("login-form");
    const logout = document.getElementById("logout");
    logout.classList.toggle("hidden", !token());
    logout.addEventListener("click", () => { localStorage.removeItem(KEY); location.reload(); });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const value = document.getElementById("token").value.trim();
      if (!value) return;
      localStorage.setItem(KEY, value);
      try {
        await api("/api/v1/overview");
      } catch (e) {
        localStorage.removeItem(KEY);
        document.getElementById("login-error").textContent = e instanceof AuthError ? "that token is not valid" : e.message;
        return;
      }
      logout.classList.remove("hidden");
      onReady();
    });
    return {
      needLogin() { main.classList.add("hidden"); login.classList.remove("hidden"); },
      ready() { login.classList.add("hidden"); main.classList.remove("hidden"); },
    };
  }

  function showWho(overview) {
    const who = document.getElementById("who");
    const how = overview.user === "local" && !token() ? " via loopback" : "";
    who.textContent = overview.user + " (" + overview.role + how + ") · v" + overview.version;
  }

  // Refresh every `ms`, paused while the tab is hidden; the dot turns amber while refreshes fail.
  function every(ms, fn) {
    let timer = null;
    const dot = document.getElementById("live-dot");
    async function tick() {
      clearTimeout(timer);
      if (!document.hidden) {
        try { await fn(); dot.classList.remove("stale"); } catch (e) {
          dot.classList.add("stale");
          if (e instanceof AuthError) return; // fn shows the login form; it restarts us
          console.warn(e);
        }
      }
      timer = setTimeout(tick, ms);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    return tick;
  }

  return { AuthError, api, authHeaders, token, el, now, setServerTime, duration, ago, when, percentOf, eta, bar,
           badge, taskLink, short, fill, session, showWho, every };
})();
