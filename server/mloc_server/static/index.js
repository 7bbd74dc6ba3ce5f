// MLOC status page: the fleet, the queue, running and finished tasks; one page of each, refreshed live.
"use strict";

(() => {
  const { api, el, ago, duration, bar, badge, taskLink, short, fill, eta } = MLOC;
  const PAGE = 25;
  const pages = { agents: 1, running: 1, queue: 1, finished: 1 };
  const $ = (id) => document.getElementById(id);

  function gpuCell(g) {
    const mem = g.memory_used_mb != null
      ? (g.memory_used_mb / 1024).toFixed(1) + "/" + (g.memory_total_mb / 1024).toFixed(0) + " GB"
      : (g.memory_total_mb / 1024).toFixed(0) + " GB";
    const util = g.utilization_pct;
    return el("div", { class: "gpu", "data-gpu": g.index },
      el("span", { class: "mono", text: g.index + " " }), short(g.name.replace(/^NVIDIA /, ""), 28), " · ", mem,
      util != null ? [el("span", { class: "util" }, el("span", { style: "width:" + Math.min(100, util) + "%" })),
        Math.round(util) + "%"] : (g.declared ? " · declared" : ""),
      g.task_id ? [" · ", el("a", { href: "/tasks/" + encodeURIComponent(g.task_id), text: "busy" })]
        : (g.busy ? " · busy" : ""));  // another user's task: the listing says the GPU is taken, not by what
  }

  function agentRow(a) {
    const labels = Object.entries(a.labels || {}).map(([k, v]) => el("span", { class: "label", text: k + "=" + v }));
    const gpus = a.gpus.length ? a.gpus.map(gpuCell) : [el("span", { class: "empty", text: "no GPU (CPU only)" })];
    const leases = a.leases.map((l) => !l.task_id ? el("div", { class: "empty", text: "another user's task" }) : el("div", {},
      el("a", { href: "/tasks/" + encodeURIComponent(l.task_id), class: "mono", text: l.task_id.slice(-8) }),
      l.progress && MLOC.percentOf(l.progress) != null ? " " + MLOC.percentOf(l.progress).toFixed(0) + "%" : ""));
    return el("tr", { "data-agent": a.name },
      el("td", {}, el("b", { text: a.name }), el("div", { class: "mono", text: a.hostname + (a.address ? " · " + a.address : "") })),
      el("td", {}, badge(a.state)), el("td", {}, labels), el("td", {}, gpus),
      el("td", { text: ago(a.last_seen) }), el("td", {}, leases.length ? leases : "–"));
  }

  function runningRow(t) {
    const lease = t.lease || {};
    const p = t.progress || {};
    const detail = [p.step != null && p.total ? p.step + "/" + p.total : "", p.loss != null ? "loss " + p.loss.toFixed(4) : "",
      p.message || ""].filter(Boolean).join(" · ");
    return el("tr", { "data-task": t.id },
      el("td", {}, taskLink(t)), el("td", { text: t.task_type }), el("td", { text: t.user }),
      el("td", {}, (lease.agent || "–") + (lease.gpus && lease.gpus.length ? " · GPU " + lease.gpus.join(",") : "")),
      el("td", {}, bar(t.progress), el("div", { class: "mono", text: detail })),
      el("td", { class: "eta", text: t.cancel_requested ? "cancelling" : duration(eta(t)) }),
      el("td", { text: t.attempts + "/" + t.max_attempts }));
  }

  const queueRow = (t) => el("tr", { "data-task": t.id },
    el("td", {}, taskLink(t)), el("td", { text: t.task_type }), el("td", { text: t.user }), el("td", { text: t.priority }),
    el("td", { text: ago(t.created_at) }), el("td", { text: t.pending_reason || "" }));

  const finishedRow = (t) => el("tr", { "data-task": t.id },
    el("td", {}, taskLink(t)), el("td", { text: t.task_type }), el("td", { text: t.user }), el("td", {}, badge(t.state)),
    el("td", { text: ago(t.finished_at), title: MLOC.when(t.finished_at) }),
    el("td", { text: t.started_at ? duration(t.finished_at - t.started_at) : "–" }),
    el("td", { text: String(t.attempts) }), el("td", { class: "mono", text: short(t.error, 140) }));

  function pager(name, total, pageCount) {
    const box = document.querySelector('.pager[data-for="' + name + '"]');
    if (pageCount <= 1) { box.replaceChildren(); return; }
    pages[name] = Math.min(pages[name], pageCount);
    const go = (delta) => () => { pages[name] += delta; refresh(); };
    box.replaceChildren(
      el("button", { type: "button", onclick: go(-1), disabled: pages[name] <= 1 }, "‹ prev"),
      "page " + pages[name] + " of " + pageCount + " (" + total + ")",
      el("button", { type: "button", onclick: go(1), disabled: pages[name] >= pageCount }, "next ›"));
  }

  function counts(o) {
    const t = o.tasks || {};
    const item = (label, value) => el("span", {}, label + " ", el("b", { text: String(value) }));
    $("counts").replaceChildren(
      item("agents", o.agents.active + "/" + o.agents_total), item("GPUs free", o.gpus.free + "/" + o.gpus.total),
      item("queued", t.queued || 0), item("blocked", t.blocked || 0), item("running", t.running || 0),
      item("succeeded", t.succeeded || 0),
      item("failed", t.failed || 0));
  }

  function agentsQuery() {
    const q = new URLSearchParams({ page: pages.agents, page_size: PAGE });
    if ($("agents-state").value) q.set("state", $("agents-state").value);
    if ($("agents-q").value.trim()) q.set("q", $("agents-q").value.trim());
    return "/api/v1/workers?" + q;
  }
  const tasksQuery = (name, state) => "/api/v1/tasks?" + new URLSearchParams({ state, page: pages[name], page_size: PAGE });

  async function refresh() {
    const sent = Date.now() / 1000;
    const [o, agents, running, queue, finished] = await Promise.all([
      api("/api/v1/overview"), api(agentsQuery()), api(tasksQuery("running", "running")),
      api(tasksQuery("queue", "queued,blocked")), api(tasksQuery("finished", $("finished-state").value)),
    ]);
    MLOC.setServerTime(o.server_time, sent);
    MLOC.showWho(o);
    counts(o);
    fill($("agents-body"), agents.workers.map(agentRow), 6, "no agent matches");
    fill($("running-body"), running.tasks.map(runningRow), 7, "nothing running");
    fill($("queue-body"), queue.tasks.map(queueRow), 6, "the queue is empty");
    fill($("finished-body"), finished.tasks.map(finishedRow), 8, "no finished task yet");
    $("agents-total").textContent = agents.total + " shown of " + o.agents_total;
    $("running-total").textContent = String(running.total);
    $("queue-total").textContent = String(queue.total);
    $("finished-total").textContent = String(finished.total);
    pager("agents", agents.total, agents.pages);
    pager("running", running.total, running.pages);
    pager("queue", queue.total, queue.pages);
    pager("finished", finished.total, finished.pages);
    window.mlocRefreshes = (window.mlocRefreshes || 0) + 1; // tests watch this advance
  }

  const session = MLOC.session(() => { session.ready(); tick(); });
  const tick = MLOC.every(1500, async () => {
    try { await refresh(); session.ready(); } catch (e) {
      if (e instanceof MLOC.AuthError) session.needLogin();
      throw e;
    }
  });
  for (const id of ["agents-state", "finished-state"]) $(id).addEventListener("change", () => { pages.agents = pages.finished = 1; tick(); });
  let typing = null;
  $("agents-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { pages.agents = 1; tick(); }, 250); });
  tick();
})();
