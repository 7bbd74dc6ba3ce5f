// MLOC pipeline and sweep page: /pipelines/ID — the steps' states (polled while any is unfinished), one cancel
// for all, and the comparison view (compare.js) over the steps' tasks: their curves overlaid, final metrics sortable.
"use strict";

(() => {
  const { api, el, badge, when, duration } = MLOC;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const base = "/api/v1/pipelines/" + encodeURIComponent(id);
  const $ = (x) => document.getElementById(x);
  let view = null;
  let mountedFor = "";

  const values = (v) => (v ? Object.entries(v).map(([k, x]) => k + "=" + x).join(", ") : "");

  function render(p) {
    document.title = "MLOC — " + (p.name || p.id);
    $("pipeline-kind").textContent = p.kind;
    $("pipeline-title").textContent = p.name || p.id;
    $("pipeline-name").textContent = (p.name || "") + " (" + p.id + ")";
    $("pipeline-state").replaceChildren(badge(p.state));
    const open = p.steps.some((s) => !FINAL.has(s.state));
    $("cancel").classList.toggle("hidden", !open);
    MLOC.fill($("steps-body"), p.steps.map((s) => el("tr", { "data-step": s.name },
      el("td", {}, el("a", { href: "/tasks/" + encodeURIComponent(s.task_id), title: s.task_id }, s.name)),
      el("td", {}, badge(s.state)), el("td", { class: "mono", text: values(s.values) }),
      el("td", { text: when(s.started_at) }),
      el("td", { text: s.started_at ? duration((s.finished_at || MLOC.now()) - s.started_at) : "–" }),
      el("td", { class: "mono", text: s.pending_reason || s.error || "" }))), 6, "no steps");
    const ids = p.steps.map((s) => s.task_id);
    if (ids.join(",") !== mountedFor) { // the view refreshes itself while any of its tasks runs
      mountedFor = ids.join(",");
      if (view) view.stop();
      view = MLOCCompare.mount($("compare"), ids, { onAuthError: () => session.needLogin() });
    }
    return open;
  }

  let done = false; // every step final: the page stops asking (the comparison view stops on its own)
  const session = MLOC.session(() => { session.ready(); tick(); });
  const tick = MLOC.every(3000, async () => {
    if (done) return;
    let p;
    try { p = await api(base); } catch (e) {
      if (e instanceof MLOC.AuthError) session.needLogin();
      throw e;
    }
    session.ready();
    done = !render(p);
  });

  $("cancel").addEventListener("click", async () => {
    $("cancel-msg").textContent = "";
    try { await api(base + "/cancel", { method: "POST" }); } catch (e) { $("cancel-msg").textContent = e.message; }
    done = false;
    tick();
  });
  api("/api/v1/overview").then((o) => { MLOC.setServerTime(o.server_time, Date.now() / 1000); MLOC.showWho(o); }).catch(() => {});
  tick();
})();
